//! The documentation (README.md and docs/*.md) stays in step with the code:
//!
//! - every key the configuration reference (docs/configuration.md) shows is one the
//!   config reader knows, and its values pass validation (only the example file paths,
//!   which do not exist here, may fail);
//! - every ```toml block parses as a config, and, unless it is marked
//!   ```toml fragment (a piece leaning on tables shown elsewhere), passes validation
//!   once a listener and a backend are added where it has none;
//! - every relative link points to a file that exists, and every #anchor to a heading;
//! - every `portcullis explain` example runs, and one shown with its output (`$ `)
//!   prints exactly that output;
//! - the example configuration the README runs checks clean;
//! - the README stays a front page (under 250 lines).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// README.md and every docs/*.md, as (path relative to the repository, text).
fn documents() -> Vec<(PathBuf, String)> {
    let mut paths = vec![PathBuf::from("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(Path::new(REPO).join("docs"))
        .expect("a docs/ directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| p.strip_prefix(REPO).unwrap().to_path_buf())
        .collect();
    docs.sort();
    paths.extend(docs);
    paths
        .into_iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(Path::new(REPO).join(&p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, text)
        })
        .collect()
}

/// A fenced code block: its info string (what follows the opening fence), its text,
/// and the line its fence opens on (1-based).
struct Block {
    info: String,
    body: String,
    line: usize,
}

/// Whether `line` opens or closes a fence (``` or ~~~, up to three spaces in).
fn fence(line: &str) -> Option<&str> {
    let trimmed = line.trim_start_matches(' ');
    if line.len() - trimmed.len() > 3 {
        return None;
    }
    trimmed.strip_prefix("```").or_else(|| trimmed.strip_prefix("~~~"))
}

/// The fenced code blocks of a document, and its text with them left out (each of
/// their lines an empty line, so line numbers stay).
fn split_fences(text: &str) -> (Vec<Block>, String) {
    let (mut blocks, mut prose) = (Vec::new(), String::new());
    let mut open: Option<Block> = None;
    for (i, line) in text.lines().enumerate() {
        match (&mut open, fence(line)) {
            (None, Some(info)) => {
                open = Some(Block { info: info.trim().to_string(), body: String::new(), line: i + 1 });
                prose.push('\n');
            }
            (None, None) => {
                prose.push_str(line);
                prose.push('\n');
            }
            (Some(_), Some(rest)) if rest.trim().is_empty() => {
                blocks.push(open.take().unwrap());
                prose.push('\n');
            }
            (Some(block), _) => {
                block.body.push_str(line);
                block.body.push('\n');
                prose.push('\n');
            }
        }
    }
    assert!(open.is_none(), "a code fence is never closed");
    (blocks, prose)
}

// === The configuration reference ===

fn reference_block() -> String {
    let text = std::fs::read_to_string(Path::new(REPO).join("docs/configuration.md")).unwrap();
    let section = text
        .split("\n## Configuration reference\n")
        .nth(1)
        .expect("docs/configuration.md has a configuration reference");
    let (blocks, _) = split_fences(section);
    let block = blocks.into_iter().find(|b| b.info == "toml").expect("a toml block in it");
    assert!(
        block.body.contains("[[listener]]") && block.body.contains("[[backend]]"),
        "not the whole reference:\n{}",
        block.body
    );
    block.body
}

/// Problems a documented config may have here only because its example files (the
/// certificate, users file, CA) do not exist on this machine.
fn only_missing_files(problems: &[String]) -> Vec<&String> {
    problems.iter().filter(|p| !p.contains("No such file or directory")).collect()
}

#[test]
fn every_key_in_the_configuration_reference_is_known() {
    let block = reference_block();
    if let Err(e) = toml::from_str::<portcullis::config::raw::RawConfig>(&block) {
        panic!("the configuration reference does not parse:\n{e}");
    }
    if let Err(e) = portcullis::config::parse(&block) {
        let unexpected = only_missing_files(&e.problems);
        assert!(unexpected.is_empty(), "the reference's values fail validation: {unexpected:#?}");
    }
}

// === Every toml example ===

/// What a recipe that shows no listener or backend of its own is checked with.
const BASE_LISTENER: &str = "[[listener]]\nname = \"base\"\nbind = \"127.0.0.1:2525\"\n";
const BASE_BACKEND: &str = "[[backend]]\naddress = \"127.0.0.1:25\"\nidentity = \"xclient\"\n";

#[test]
fn every_toml_example_parses() {
    let mut checked = 0;
    for (path, text) in documents() {
        let (blocks, _) = split_fences(&text);
        for block in blocks.iter().filter(|b| b.info.split_whitespace().next() == Some("toml")) {
            let at = format!("{}:{}", path.display(), block.line);
            if let Err(e) = toml::from_str::<portcullis::config::raw::RawConfig>(&block.body) {
                panic!("{at}: the example does not parse as a config:\n{e}\n{}", block.body);
            }
            checked += 1;
            if block.info.split_whitespace().any(|w| w == "fragment") {
                continue;
            }
            let table: toml::Table = block.body.parse().unwrap();
            let mut whole = block.body.clone();
            if !table.contains_key("listener") {
                whole = format!("{BASE_LISTENER}{whole}");
            }
            if !table.contains_key("backend") {
                whole.push_str(BASE_BACKEND);
            }
            if let Err(e) = portcullis::config::parse(&whole) {
                let unexpected = only_missing_files(&e.problems);
                assert!(
                    unexpected.is_empty(),
                    "{at}: the example fails validation (mark it ```toml fragment if it leans on tables shown elsewhere): {unexpected:#?}\n{}",
                    block.body
                );
            }
        }
    }
    // The reference, submission, the filter recipes, the deployment recipes.
    assert!(checked >= 10, "only {checked} toml examples found: is the extraction broken?");
}

// === Links ===

/// GitHub's anchor for a heading: lower case, spaces to hyphens, other punctuation
/// (and markup: backticks, asterisks) left out.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .flat_map(|c| {
            let keep = c.is_alphanumeric() || c == '-' || c == '_';
            let c = if c == ' ' {
                Some('-')
            } else if keep {
                Some(c)
            } else {
                None
            };
            c.into_iter().flat_map(char::to_lowercase)
        })
        .collect()
}

/// The anchors of a document's headings (outside code), duplicates numbered as GitHub does.
fn anchors(text: &str) -> BTreeSet<String> {
    let (_, prose) = split_fences(text);
    let mut seen = BTreeSet::new();
    for line in prose.lines() {
        let hashes = line.len() - line.trim_start_matches('#').len();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = anchor(&line[hashes..]);
        let mut a = base.clone();
        let mut n = 0;
        while seen.contains(&a) {
            n += 1;
            a = format!("{base}-{n}");
        }
        seen.insert(a);
    }
    seen
}

/// `text` without its inline code spans (a run of backticks to the next run as long).
fn without_code_spans(text: &str) -> String {
    let b = text.as_bytes();
    let (mut out, mut i) = (String::new(), 0);
    while i < b.len() {
        if b[i] != b'`' {
            let next = text[i..].find('`').map_or(b.len(), |n| i + n);
            out.push_str(&text[i..next]);
            i = next;
            continue;
        }
        let run = b[i..].iter().take_while(|&&c| c == b'`').count();
        let mut j = i + run;
        let mut close = None;
        while j < b.len() {
            if b[j] == b'`' {
                let r = b[j..].iter().take_while(|&&c| c == b'`').count();
                if r == run {
                    close = Some(j + r);
                    break;
                }
                j += r;
            } else {
                j += 1;
            }
        }
        match close {
            Some(end) => {
                out.push(' ');
                i = end;
            }
            None => {
                out.push_str(&text[i..i + run]);
                i += run;
            }
        }
    }
    out
}

/// The targets of a document's inline links and images, outside code.
fn link_targets(text: &str) -> Vec<String> {
    let (_, prose) = split_fences(text);
    let prose = without_code_spans(&prose);
    let mut targets = Vec::new();
    let mut rest = prose.as_str();
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        let end = rest.find(')').expect("a link target is never closed");
        targets.push(rest[..end].trim().to_string());
        rest = &rest[end..];
    }
    targets
}

#[test]
fn every_relative_link_points_to_something_that_exists() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for (path, text) in documents() {
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, fragment) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target.as_str(), None),
            };
            let resolved = if file.is_empty() {
                Path::new(REPO).join(&path)
            } else {
                Path::new(REPO).join(path.parent().unwrap()).join(file)
            };
            if !resolved.exists() {
                broken.push(format!("{}: {target}: no such file", path.display()));
                continue;
            }
            if let Some(fragment) = fragment {
                let target_text = std::fs::read_to_string(&resolved).unwrap_or_default();
                if !anchors(&target_text).contains(fragment) {
                    broken.push(format!("{}: {target}: no heading with that anchor", path.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked >= 20, "only {checked} relative links found: is the extraction broken?");
}

#[test]
fn anchors_are_made_as_github_makes_them() {
    assert_eq!(anchor("Submission on 587 and 465, with AUTH"), "submission-on-587-and-465-with-auth");
    assert_eq!(anchor("`check` lints"), "check-lints");
    assert_eq!(anchor("DNS block- and allowlists"), "dns-block--and-allowlists");
    assert_eq!(anchor("What would happen?"), "what-would-happen");
    let a = anchors("# A\n```\n# not a heading\n```\n## A\n#nope\n");
    assert_eq!(a, BTreeSet::from(["a".to_string(), "a-1".to_string()]));
    assert_eq!(link_targets("[x](a.md) `[y](b.md)` [`z`](c.md#d)\n```\n[w](e.md)\n```\n"), ["a.md", "c.md#d"]);
}

// === Commands shown with their output ===

/// Splits a shell command line into words (single and double quotes, backslashes).
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut in_word) = (Vec::new(), String::new(), false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => word.extend(chars.next()),
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.extend(chars.next());
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// An example command in an indented code block: where it is, its words, and, when
/// it is shown with a prompt (`$ `), the output shown after it.
struct Example {
    at: String,
    words: Vec<String>,
    output: Option<Vec<String>>,
}

/// Every `portcullis SUBCOMMAND` command of the documents in an indented code block.
fn examples(subcommand: &str) -> Vec<Example> {
    let mut found = Vec::new();
    for (path, text) in documents() {
        let (_, prose) = split_fences(&text);
        let lines: Vec<&str> = prose.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i];
            let code = line.strip_prefix("    ").map(str::trim_start);
            let (prompted, command) = match code {
                Some(c) if c.starts_with("$ portcullis ") => (true, &c[2..]),
                Some(c) if c.starts_with("portcullis ") => (false, c),
                _ => {
                    i += 1;
                    continue;
                }
            };
            if command.split_whitespace().nth(1) != Some(subcommand) {
                i += 1;
                continue;
            }
            let at = format!("{}:{}", path.display(), i + 1);
            // The command, with its continuation lines; a comment ends it.
            let mut joined = command.to_string();
            while joined.ends_with('\\') && i + 1 < lines.len() {
                joined.pop();
                i += 1;
                joined.push(' ');
                joined.push_str(lines[i].trim());
            }
            let joined = joined.split(" #").next().unwrap().to_string();
            i += 1;
            let output = prompted.then(|| {
                let mut out = Vec::new();
                while i < lines.len() && lines[i].starts_with("    ") {
                    out.push(lines[i][4..].to_string());
                    i += 1;
                }
                out
            });
            found.push(Example { at, words: shell_words(&joined), output });
        }
    }
    found
}

#[test]
fn the_explain_examples_print_what_they_show() {
    let found = examples("explain");
    assert!(found.iter().any(|e| e.output.is_some()), "no `$ portcullis explain` example shown with its output");
    for example in found {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(&example.words[1..])
            .current_dir(REPO)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {:?} failed:\n{stdout}{}",
            example.at,
            example.words,
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(shown) = example.output {
            let printed: Vec<&str> = stdout.lines().map(str::trim_end).collect();
            let shown: Vec<&str> = shown.iter().map(|l| l.trim_end()).collect();
            assert_eq!(
                printed,
                shown,
                "{}: `{}` prints something else than the docs show",
                example.at,
                example.words.join(" ")
            );
        }
    }
}

#[test]
fn the_example_configuration_checks_clean() {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config", "config/portcullis.toml"])
        .current_dir(REPO)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "portcullis check --config config/portcullis.toml:\n{text}");
}

// === The front page ===

#[test]
fn the_readme_is_a_front_page() {
    let readme = std::fs::read_to_string(Path::new(REPO).join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(lines < 250, "README.md has {lines} lines: move details to docs/ and link them");
    // The two commands, exactly as a fresh machine runs them.
    for command in ["cargo run --release -- run --config config/portcullis.toml", "cargo test"] {
        assert!(readme.lines().any(|l| l.trim() == command), "the README no longer shows `{command}`");
    }
}
