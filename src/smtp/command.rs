//! Parsing one client command line (CRLF already removed) into a [`Command`]. Paths
//! are returned as the client wrote them, so the relay decision judges exactly the
//! bytes the backend will see.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    Helo(&'a str),
    Ehlo(&'a str),
    Mail {
        path: &'a str,
        params: Vec<Param<'a>>,
    },
    Rcpt {
        path: &'a str,
        params: Vec<Param<'a>>,
    },
    Data,
    /// RFC 3030: a chunk of `size` bytes follows the command line.
    Bdat(super::bdat::Chunk),
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    /// AUTH with its arguments (mechanism and optional initial response).
    Auth(&'a str),
    /// A known verb of an extension Portcullis does not offer (the verb, upper-case).
    NotImplemented(&'static str),
    /// XCLIENT / XFORWARD from a client: an attempt to claim another identity.
    Spoof(&'static str),
}

/// An ESMTP parameter of MAIL or RCPT: `KEYWORD[=value]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    pub keyword: &'a str,
    pub value: Option<&'a str>,
}

impl Command<'_> {
    /// The verb, upper-case, for log lines.
    pub(crate) fn verb(&self) -> &'static str {
        match self {
            Command::Helo(_) => "HELO",
            Command::Ehlo(_) => "EHLO",
            Command::Mail { .. } => "MAIL",
            Command::Rcpt { .. } => "RCPT",
            Command::Data => "DATA",
            Command::Bdat(_) => "BDAT",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Quit => "QUIT",
            Command::Vrfy => "VRFY",
            Command::Help => "HELP",
            Command::StartTls => "STARTTLS",
            Command::Auth(_) => "AUTH",
            Command::NotImplemented(verb) | Command::Spoof(verb) => verb,
        }
    }

    /// RFC 2920 (and RFC 4954 for AUTH): commands after which a client must wait for
    /// the reply before sending more. DATA and STARTTLS are checked where they are
    /// handled, with their own replies.
    pub(crate) fn ends_group(&self) -> bool {
        matches!(
            self,
            Command::Helo(_)
                | Command::Ehlo(_)
                | Command::Vrfy
                | Command::Noop
                | Command::Auth(_)
                | Command::NotImplemented("EXPN" | "TURN" | "ATRN" | "ETRN")
        )
    }

    /// Commands that move nothing forward (Postfix's junk commands): a client may send
    /// a few, not an endless stream.
    pub(crate) fn is_junk(&self) -> bool {
        matches!(self, Command::Noop | Command::Vrfy | Command::Rset | Command::Help)
            || matches!(self, Command::Bdat(c) if c.size == 0 && !c.last)
    }
}

/// A line that is not a valid command; each carries its complete reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CommandError {
    #[error("unknown command")]
    Unknown,
    /// Traffic that is not SMTP (an HTTP request, a TLS handshake on a plain port,
    /// binary data, message headers sent as commands): the session is closed, as
    /// Postfix's `smtpd_forbidden_commands` does.
    #[error("not an SMTP client")]
    NotSmtp,
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    /// BDAT whose size cannot be read: where its chunk ends is unknown, so nothing
    /// after it can be read as a command; the session is closed.
    #[error("BDAT without a readable size")]
    BadBdat,
}

impl CommandError {
    pub(crate) fn reply(&self) -> &'static str {
        match self {
            CommandError::Unknown => "500 5.5.1 Error: command not recognized",
            CommandError::NotSmtp => "554 5.5.1 Error: this is an SMTP server",
            CommandError::Syntax(reply) => reply,
            CommandError::BadBdat => "501 5.5.4 Syntax: BDAT chunk-size [LAST]",
        }
    }
}

const EHLO_SYNTAX: &str = "501 5.5.4 Syntax: EHLO hostname";
const HELO_SYNTAX: &str = "501 5.5.4 Syntax: HELO hostname";
const MAIL_SYNTAX: &str = "501 5.5.4 Syntax: MAIL FROM:<address>";
const RCPT_SYNTAX: &str = "501 5.5.4 Syntax: RCPT TO:<address>";
const PARAM_SYNTAX: &str = "501 5.5.4 Syntax error in parameters";
const NO_ARGS: &str = "501 5.5.4 Syntax error: no arguments allowed";
const NOT_TEXT: &str = "500 5.5.2 Error: command contains control or 8-bit characters";

/// Parses one command line (without CRLF). Only MAIL and RCPT may hold 8-bit text, and
/// only valid UTF-8 (their addresses under SMTPUTF8; the session decides whether the
/// transaction allows it).
pub fn parse(line: &[u8]) -> Result<Command<'_>, CommandError> {
    if not_smtp(line) {
        return Err(CommandError::NotSmtp);
    }
    let bdat = line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"BDAT") && line.get(4).is_none_or(|&b| b == b' ');
    if bdat && line.iter().any(|b| !(0x20..0x7f).contains(b)) {
        // Where its chunk ends is unreadable: nothing after it is a command.
        return Err(CommandError::BadBdat);
    }
    if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(CommandError::Syntax(NOT_TEXT));
    }
    let line = std::str::from_utf8(line).map_err(|_| CommandError::Syntax(NOT_TEXT))?;
    if !line.is_ascii() {
        let verb = line.get(..5).unwrap_or("");
        let utf8_allowed = verb.eq_ignore_ascii_case("MAIL ") || verb.eq_ignore_ascii_case("RCPT ");
        if !utf8_allowed || line.chars().any(char::is_control) {
            return Err(CommandError::Syntax(NOT_TEXT));
        }
    }
    let (verb, args) = match line.find([' ', '\t']) {
        Some(i) => (&line[..i], line[i + 1..].trim_matches([' ', '\t'])),
        None => (line, ""),
    };
    let is = |name: &str| verb.eq_ignore_ascii_case(name);
    let no_args = |cmd: Command<'static>| {
        if args.is_empty() { Ok(cmd) } else { Err(CommandError::Syntax(NO_ARGS)) }
    };
    if is("EHLO") || is("HELO") {
        let syntax = if is("EHLO") { EHLO_SYNTAX } else { HELO_SYNTAX };
        if args.is_empty() || args.contains([' ', '\t']) {
            return Err(CommandError::Syntax(syntax));
        }
        return Ok(if is("EHLO") { Command::Ehlo(args) } else { Command::Helo(args) });
    }
    if is("MAIL") {
        let (path, params) = path_and_params(args, "FROM:", MAIL_SYNTAX)?;
        return Ok(Command::Mail { path, params });
    }
    if is("RCPT") {
        let (path, params) = path_and_params(args, "TO:", RCPT_SYNTAX)?;
        return Ok(Command::Rcpt { path, params });
    }
    if is("DATA") {
        return no_args(Command::Data);
    }
    if is("RSET") {
        return no_args(Command::Rset);
    }
    if is("QUIT") {
        return no_args(Command::Quit);
    }
    if is("NOOP") {
        return Ok(Command::Noop);
    }
    if is("HELP") {
        return Ok(Command::Help);
    }
    if is("VRFY") {
        return if args.is_empty() {
            Err(CommandError::Syntax("501 5.5.4 Syntax: VRFY address"))
        } else {
            Ok(Command::Vrfy)
        };
    }
    for name in ["XCLIENT", "XFORWARD", "PROXY"] {
        if is(name) {
            return Ok(Command::Spoof(name));
        }
    }
    if is("STARTTLS") {
        return if args.is_empty() {
            Ok(Command::StartTls)
        } else {
            Err(CommandError::Syntax("501 5.5.4 Syntax: STARTTLS"))
        };
    }
    if is("AUTH") {
        return Ok(Command::Auth(args));
    }
    if is("BDAT") {
        return super::bdat::parse_args(args).map(Command::Bdat).ok_or(CommandError::BadBdat);
    }
    for name in ["EXPN", "ETRN", "TURN", "ATRN", "SEND", "SOML", "SAML"] {
        if is(name) {
            return Ok(Command::NotImplemented(name));
        }
    }
    let http = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "CONNECT", "PATCH", "PRI"];
    if http.iter().any(|m| is(m)) && args.ends_with(|c: char| c.is_ascii_digit()) && args.contains(" HTTP/") {
        return Err(CommandError::NotSmtp);
    }
    Err(CommandError::Unknown)
}

/// Lines no SMTP client sends: not starting with a letter (binary data, a TLS record,
/// an HTTP/2 or other protocol's preface), or a first word ending in `:` (a message
/// header, so message content taken for commands). An empty line is only a bad command.
fn not_smtp(line: &[u8]) -> bool {
    let Some(&first) = line.first() else { return false };
    let verb_end = line.iter().position(|&b| b == b' ' || b == b'\t').unwrap_or(line.len());
    !first.is_ascii_alphabetic() || line[..verb_end].ends_with(b":")
}

/// `FROM:<path> params` / `TO:<path> params`; a space after the colon is tolerated.
fn path_and_params<'a>(
    args: &'a str,
    prefix: &str,
    syntax: &'static str,
) -> Result<(&'a str, Vec<Param<'a>>), CommandError> {
    let head = args.get(..prefix.len()).ok_or(CommandError::Syntax(syntax))?;
    if !head.eq_ignore_ascii_case(prefix) {
        return Err(CommandError::Syntax(syntax));
    }
    let rest = args[prefix.len()..].trim_start_matches(' ');
    let (path, rest) = angle_path(rest).ok_or(CommandError::Syntax(syntax))?;
    let mut params = Vec::new();
    for word in rest.split([' ', '\t']).filter(|w| !w.is_empty()) {
        params.push(parse_param(word).ok_or(CommandError::Syntax(PARAM_SYNTAX))?);
    }
    Ok((path, params))
}

/// Splits `<path>rest`; the `>` inside a quoted local part does not end the path.
fn angle_path(s: &str) -> Option<(&str, &str)> {
    let inner = s.strip_prefix('<')?;
    let bytes = inner.as_bytes();
    let mut quoted = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => {
                let rest = &inner[i + 1..];
                if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
                    return None;
                }
                return Some((&inner[..i], rest));
            }
            b'<' if !quoted => return None,
            _ => {}
        }
        i += 1;
    }
    None
}

fn parse_param(word: &str) -> Option<Param<'_>> {
    let (keyword, value) = match word.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (word, None),
    };
    let keyword_ok = !keyword.is_empty()
        && keyword.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && keyword.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let value_ok = value.is_none_or(|v| !v.is_empty() && !v.contains('='));
    (keyword_ok && value_ok).then_some(Param { keyword, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command<'_> {
        parse(line.as_bytes()).unwrap()
    }
    fn err(line: &str) -> &'static str {
        parse(line.as_bytes()).unwrap_err().reply()
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(ok("ehlo client.example"), Command::Ehlo("client.example"));
        assert_eq!(ok("HeLo [192.0.2.1]"), Command::Helo("[192.0.2.1]"));
        assert_eq!(ok("data"), Command::Data);
        assert_eq!(ok("QUIT"), Command::Quit);
        assert_eq!(ok("noop anything"), Command::Noop);
        assert_eq!(ok("HELP"), Command::Help);
        assert_eq!(ok("VRFY root"), Command::Vrfy);
        assert_eq!(ok("STARTTLS"), Command::StartTls);
        assert_eq!(err("STARTTLS now"), "501 5.5.4 Syntax: STARTTLS");
        assert_eq!(ok("AUTH PLAIN AGEAYg=="), Command::Auth("PLAIN AGEAYg=="));
        assert_eq!(ok("EXPN staff"), Command::NotImplemented("EXPN"));
        assert_eq!(ok("xclient ADDR=1.2.3.4"), Command::Spoof("XCLIENT"));
        assert_eq!(ok("XFORWARD ADDR=1.2.3.4"), Command::Spoof("XFORWARD"));
        assert_eq!(ok("PROXY TCP4 10.0.0.1 10.0.0.2 1 25"), Command::Spoof("PROXY"));
    }

    #[test]
    fn mail_and_rcpt() {
        assert_eq!(ok("MAIL FROM:<>"), Command::Mail { path: "", params: vec![] });
        assert_eq!(
            ok("mail from: <a@b.example> SIZE=100 BODY=8BITMIME"),
            Command::Mail {
                path: "a@b.example",
                params: vec![
                    Param { keyword: "SIZE", value: Some("100") },
                    Param { keyword: "BODY", value: Some("8BITMIME") }
                ]
            }
        );
        assert_eq!(ok("RCPT TO:<u@example.com>"), Command::Rcpt { path: "u@example.com", params: vec![] });
        assert_eq!(ok("RCPT TO:<\"a>b\"@example.com>"), Command::Rcpt { path: "\"a>b\"@example.com", params: vec![] });
        assert_eq!(
            ok("RCPT TO:<@r.example:u@example.com>"),
            Command::Rcpt { path: "@r.example:u@example.com", params: vec![] }
        );
    }

    #[test]
    fn syntax_errors_have_501_5_5_4() {
        assert_eq!(err("EHLO"), EHLO_SYNTAX);
        assert_eq!(err("HELO a b"), HELO_SYNTAX);
        assert_eq!(err("MAIL"), MAIL_SYNTAX);
        assert_eq!(err("MAIL TO:<a@b>"), MAIL_SYNTAX);
        assert_eq!(err("MAIL FROM:a@b"), MAIL_SYNTAX);
        assert_eq!(err("MAIL FROM:<a@b"), MAIL_SYNTAX);
        assert_eq!(err("MAIL FROM:<a@b>x"), MAIL_SYNTAX);
        assert_eq!(err("RCPT TO:<<a@b>>"), RCPT_SYNTAX);
        assert_eq!(err("RCPT TO:"), RCPT_SYNTAX);
        assert_eq!(err("MAIL FROM:<a@b> SIZE="), PARAM_SYNTAX);
        assert_eq!(err("MAIL FROM:<a@b> =1"), PARAM_SYNTAX);
        assert_eq!(err("DATA now"), NO_ARGS);
        assert_eq!(err("VRFY"), "501 5.5.4 Syntax: VRFY address");
    }

    #[test]
    fn unknown_and_binary() {
        assert_eq!(err("FOO"), "500 5.5.1 Error: command not recognized");
        assert_eq!(err(""), "500 5.5.1 Error: command not recognized");
        assert_eq!(parse(b"GET / HTTP/1.1"), Err(CommandError::NotSmtp));
        assert_eq!(parse(b"CONNECT mx.example:25 HTTP/1.0"), Err(CommandError::NotSmtp));
        assert_eq!(err("GET something"), "500 5.5.1 Error: command not recognized");
        for junk in [
            &b"\x16\x03\x01\x02\x00\x01"[..],
            b"PRI * HTTP/2.0",
            b"Subject: hello",
            b"Received: from x",
            b"\xff\xfe",
            b"<html>",
            b"12345",
        ] {
            assert_eq!(parse(junk), Err(CommandError::NotSmtp), "{junk:?}");
        }
        assert_eq!(parse(b" NOOP"), Err(CommandError::NotSmtp));
        assert_eq!(
            ok("MAIL FROM:<a\u{e9}@b> SMTPUTF8"),
            Command::Mail { path: "a\u{e9}@b", params: vec![Param { keyword: "SMTPUTF8", value: None }] }
        );
        assert_eq!(
            ok("RCPT TO:<j\u{f8}rn@b\u{fc}cher.example>"),
            Command::Rcpt { path: "j\u{f8}rn@b\u{fc}cher.example", params: vec![] }
        );
        assert_eq!(err("NOOP \u{e9}"), NOT_TEXT);
        assert_eq!(err("EHLO h\u{e9}.example"), NOT_TEXT);
        assert!(parse(b"MAIL FROM:<a\xff@b>").is_err(), "invalid UTF-8");
        assert_eq!(err("RCPT TO:<a\u{85}@b>"), NOT_TEXT);
        assert_eq!(err("NOOP \0"), NOT_TEXT);
    }
}
