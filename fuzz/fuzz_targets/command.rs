//! The client command parser and the relay reading of its paths. Properties: a parsed
//! command, written back in canonical form, parses to the same command (paths and
//! parameters, BDAT sizes, EHLO names); the verb's letter case changes nothing; and a
//! path the relay judge takes as a plain mailbox has exactly one `@`, no `%` or `!`
//! (nor, under SMTPUTF8, anything NFKC turns into them), and its domain is what follows
//! that `@`: no relay trick in the local part is judged by the domain after it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::policy::address::{self, Destination};
use portcullis::policy::domains::check_domain;
use portcullis::smtp::command::{self, Command, Param};
use unicode_normalization::UnicodeNormalization;

fuzz_target!(|line: &[u8]| {
    let parsed = command::parse(line);
    for case in [u8::to_ascii_uppercase, u8::to_ascii_lowercase] {
        let verb_end = line.iter().position(|&b| b == b' ' || b == b'\t').unwrap_or(line.len());
        let recased: Vec<u8> = line.iter().enumerate().map(|(i, b)| if i < verb_end { case(b) } else { *b }).collect();
        assert_eq!(command::parse(&recased), parsed, "verb case changed the parse");
    }
    let Ok(cmd) = parsed else { return };
    let canonical = render(&cmd);
    assert_eq!(command::parse(canonical.as_bytes()), Ok(cmd.clone()), "{canonical:?} reads otherwise");
    if let Command::Mail { path, .. } | Command::Rcpt { path, .. } = cmd {
        relay_reading(path);
    }
});

/// The command as a client would write it plainly: single spaces, upper-case verbs.
fn render(cmd: &Command<'_>) -> String {
    let params = |params: &[Param<'_>]| {
        params
            .iter()
            .map(|p| p.value.map_or(format!(" {}", p.keyword), |v| format!(" {}={v}", p.keyword)))
            .collect::<String>()
    };
    match cmd {
        Command::Helo(name) => format!("HELO {name}"),
        Command::Ehlo(name) => format!("EHLO {name}"),
        Command::Mail { path, params: p } => format!("MAIL FROM:<{path}>{}", params(p)),
        Command::Rcpt { path, params: p } => format!("RCPT TO:<{path}>{}", params(p)),
        Command::Data => "DATA".into(),
        Command::Bdat(chunk) => format!("BDAT {}{}", chunk.size, if chunk.last { " LAST" } else { "" }),
        Command::Rset => "RSET".into(),
        Command::Noop => "NOOP".into(),
        Command::Quit => "QUIT".into(),
        Command::Vrfy => "VRFY postmaster".into(),
        Command::Help => "HELP".into(),
        Command::StartTls => "STARTTLS".into(),
        Command::Auth(args) => format!("AUTH {args}"),
        Command::NotImplemented(verb) | Command::Spoof(verb) => verb.to_string(),
    }
}

/// What the relay decision may take at face value.
fn relay_reading(path: &str) {
    let ascii = address::classify(path);
    if path.is_ascii() {
        // SMTPUTF8 only widens what is allowed; it changes nothing for ASCII.
        assert_eq!(address::classify_utf8(path), ascii);
    }
    if let Ok(Destination::Domain(domain)) = &ascii {
        let (_, after) = one_at_and_no_route(path);
        assert_eq!(*domain, after.to_ascii_lowercase());
    }
    if let Ok(Destination::Domain(domain)) = address::classify_utf8(path) {
        // A later hop that normalises Unicode must not find a route either.
        one_at_and_no_route(&path.nfkc().collect::<String>());
        assert!(check_domain(&domain).is_ok() && domain == domain.to_ascii_lowercase(), "{domain:?}");
    }
    if let Ok(Destination::Postmaster) = address::classify_utf8(path) {
        assert!(path.eq_ignore_ascii_case("postmaster"));
    }
}

/// A plain mailbox: one `@` (so none in the local part, quoted or not), no `%` hack
/// or bang path anywhere, no source route. Returns the local part and the domain.
fn one_at_and_no_route(path: &str) -> (&str, &str) {
    assert_eq!(path.matches('@').count(), 1, "{path:?} judged as a plain mailbox");
    assert!(!path.contains(['%', '!']), "{path:?} judged as a plain mailbox");
    let (local, domain) = path.split_once('@').expect("one @, counted above");
    assert!(!local.is_empty() && !domain.is_empty(), "{path:?} judged as a plain mailbox");
    (local, domain)
}
