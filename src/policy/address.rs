//! Reading a recipient path for the relay decision: where would a backend really
//! deliver it? Only a plain `local@domain` is judged by its domain. Every form that can
//! route somewhere other than it looks (source routes, `%` hack, bang paths, quoted
//! local parts hiding `@`, several `@`, address literals, trailing dots, no domain) is
//! reported as [`Destination::Routed`], which only clients allowed to relay may use.

use thiserror::Error;

/// Where a recipient path leads, as far as relay is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A plain mailbox; the domain, lower-cased.
    Domain(String),
    /// `<postmaster>` without a domain (RFC 5321 4.5.1): always delivered locally.
    Postmaster,
    /// A form whose real destination depends on the backend's rewriting; the form's name.
    Routed(&'static str),
}

/// A path that is not a valid RFC 5321 mailbox at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("empty recipient")]
    Empty,
    #[error("unterminated quoted local part")]
    UnterminatedQuote,
    #[error("invalid character in address")]
    BadCharacter,
    #[error("empty local part or domain")]
    EmptyPart,
    #[error("invalid domain")]
    BadDomain,
}

/// The characters that route: a backend or a later hop that normalises Unicode (NFKC)
/// turns their look-alikes (full-width, small, vertical forms, `‼`...) into them, so an
/// address hiding one is judged as routed.
const ROUTING: &[char] = &['@', '%', '!', ':', ',', '"', '[', ']'];

/// Whether NFKC normalisation would make routing characters appear in `path`.
fn hides_routing(path: &str) -> bool {
    use unicode_normalization::UnicodeNormalization;
    let count = |s: &str| s.chars().filter(|c| ROUTING.contains(c)).count();
    !path.is_ascii() && count(&path.nfkc().collect::<String>()) != count(path)
}

/// Classifies the text between `<` and `>` of a RCPT path of an ASCII transaction.
pub fn classify(path: &str) -> Result<Destination, PathError> {
    classify_with(path, false)
}

/// Classifies a RCPT path of an SMTPUTF8 transaction (RFC 6531): UTF-8 is allowed in
/// the local part and the domain; a U-label domain is judged by its A-label (IDNA), so
/// `bücher.example` and `xn--bcher-kva.example` are the same domain.
pub fn classify_utf8(path: &str) -> Result<Destination, PathError> {
    classify_with(path, true)
}

fn classify_with(path: &str, utf8: bool) -> Result<Destination, PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.bytes().any(|b| b < 0x21 && b != b' ' || b == 0x7f || (b >= 0x80 && !utf8)) {
        // Controls anywhere, and 8-bit outside an SMTPUTF8 transaction.
        return Err(PathError::BadCharacter);
    }
    if path.chars().any(char::is_control) {
        return Err(PathError::BadCharacter);
    }
    if hides_routing(path) {
        return Ok(Destination::Routed("look-alike of a routing character"));
    }
    if path.starts_with('@') {
        // <@relay1,@relay2:user@host>: RFC 5321 says ignore the route, old servers follow it.
        return Ok(Destination::Routed("source route"));
    }
    let (local, rest) = split_local_part(path)?;
    let Some(rest) = rest else {
        return Ok(if local.eq_ignore_ascii_case("postmaster") {
            Destination::Postmaster
        } else {
            Destination::Routed("no domain")
        });
    };
    if local.is_empty() || rest.is_empty() {
        return Err(PathError::EmptyPart);
    }
    if local.starts_with('"') {
        let inner = &local[1..local.len() - 1];
        if inner.contains(['@', '%', '!']) {
            return Ok(Destination::Routed("quoted local part holding a route"));
        }
    } else {
        if local.contains(' ') {
            return Err(PathError::BadCharacter);
        }
        if local.contains('%') {
            return Ok(Destination::Routed("percent hack"));
        }
        if local.contains('!') {
            return Ok(Destination::Routed("bang path"));
        }
    }
    if rest.contains('@') {
        return Ok(Destination::Routed("several @"));
    }
    if rest.starts_with('[') {
        return Ok(Destination::Routed("address literal"));
    }
    if rest.ends_with('.') {
        return Ok(Destination::Routed("trailing dot in domain"));
    }
    let domain = if rest.is_ascii() {
        rest.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(rest).map_err(|_| PathError::BadDomain)?
    };
    if crate::policy::domains::check_domain(&domain).is_err() || domain.starts_with('.') {
        return Err(PathError::BadDomain);
    }
    Ok(Destination::Domain(domain))
}

/// Splits at the `@` that ends the local part, honouring a quoted local part.
/// Returns the local part (quotes included) and what follows the `@`, if any.
fn split_local_part(path: &str) -> Result<(&str, Option<&str>), PathError> {
    if let Some(quoted) = path.strip_prefix('"') {
        let bytes = quoted.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'"' => {
                    let end = i + 2; // opening quote + closing quote
                    let local = &path[..end];
                    let after = &path[end..];
                    return match after.strip_prefix('@') {
                        Some(domain) => Ok((local, Some(domain))),
                        None if after.is_empty() => Ok((local, None)),
                        None => Err(PathError::BadCharacter),
                    };
                }
                _ => i += 1,
            }
        }
        return Err(PathError::UnterminatedQuote);
    }
    // Unquoted: the first '@' ends the local part; more '@' are caught by the caller.
    Ok(match path.split_once('@') {
        Some((local, domain)) => (local, Some(domain)),
        None => (path, None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Destination::*;

    #[test]
    fn plain_mailbox_is_judged_by_its_domain() {
        assert_eq!(classify("user@example.com"), Ok(Domain("example.com".into())));
        assert_eq!(classify("User@EXAMPLE.Com"), Ok(Domain("example.com".into())));
        assert_eq!(classify("first.last+tag@mx.example.com"), Ok(Domain("mx.example.com".into())));
        assert_eq!(classify("\"john doe\"@example.com"), Ok(Domain("example.com".into())));
    }

    #[test]
    fn postmaster_without_domain_is_local() {
        assert_eq!(classify("postmaster"), Ok(Postmaster));
        assert_eq!(classify("PostMaster"), Ok(Postmaster));
        assert_eq!(classify("root"), Ok(Routed("no domain")));
    }

    #[test]
    fn routing_forms_are_never_taken_at_face_value() {
        assert_eq!(classify("user%evil.net@example.com"), Ok(Routed("percent hack")));
        assert_eq!(classify("evil.net!user@example.com"), Ok(Routed("bang path")));
        assert_eq!(classify("evil.net!user"), Ok(Routed("no domain")));
        assert_eq!(classify("@example.com:user@evil.net"), Ok(Routed("source route")));
        assert_eq!(classify("@a.example.com,@b.example.com:user@example.com"), Ok(Routed("source route")));
        assert_eq!(classify("\"user@evil.net\"@example.com"), Ok(Routed("quoted local part holding a route")));
        assert_eq!(classify("\"user%evil.net\"@example.com"), Ok(Routed("quoted local part holding a route")));
        assert_eq!(classify("user@evil.net@example.com"), Ok(Routed("several @")));
        assert_eq!(classify("user@[192.0.2.1]"), Ok(Routed("address literal")));
        assert_eq!(classify("user@[IPv6:2001:db8::1]"), Ok(Routed("address literal")));
        assert_eq!(classify("user@example.com."), Ok(Routed("trailing dot in domain")));
    }

    #[test]
    fn invalid_paths_are_errors() {
        assert_eq!(classify(""), Err(PathError::Empty));
        assert_eq!(classify("\"unterminated@example.com"), Err(PathError::UnterminatedQuote));
        assert_eq!(classify("@"), Ok(Routed("source route")));
        assert_eq!(classify("user@"), Err(PathError::EmptyPart));
        assert_eq!(classify("@example.com"), Ok(Routed("source route")));
        assert_eq!(classify("us er@example.com"), Err(PathError::BadCharacter));
        assert_eq!(classify("user@exa_mple.com"), Err(PathError::BadDomain));
        assert_eq!(classify("user@.example.com"), Err(PathError::BadDomain));
        assert_eq!(classify("user@example..com"), Err(PathError::BadDomain));
        assert_eq!(classify("usér@example.com"), Err(PathError::BadCharacter));
        assert_eq!(classify("user@bücher.example"), Err(PathError::BadCharacter));
        assert_eq!(classify("user\t@example.com"), Err(PathError::BadCharacter));
        assert_eq!(classify("\"a\"b@example.com"), Err(PathError::BadCharacter));
    }

    #[test]
    fn quoted_escape_does_not_end_the_quote() {
        assert_eq!(classify("\"a\\\"b\"@example.com"), Ok(Domain("example.com".into())));
        assert_eq!(classify("\"a\\\"@evil.net\"@example.com"), Ok(Routed("quoted local part holding a route")));
    }

    #[test]
    fn utf8_addresses_judged_by_their_a_label_and_their_form() {
        let a_label = Ok(Domain("xn--bcher-kva.example".into()));
        assert_eq!(classify_utf8("jørn@bücher.example"), a_label);
        assert_eq!(classify_utf8("jørn@BÜCHER.example"), a_label);
        assert_eq!(classify_utf8("jørn@xn--bcher-kva.example"), a_label);
        assert_eq!(classify_utf8("ü%evil.example@example.com"), Ok(Routed("percent hack")));
        assert_eq!(classify_utf8("ü!evil.example@example.com"), Ok(Routed("bang path")));
        assert_eq!(classify_utf8("\"ü@evil.example\"@example.com"), Ok(Routed("quoted local part holding a route")));
        assert_eq!(
            classify_utf8("user\u{FF20}evil.example@example.com"),
            Ok(Routed("look-alike of a routing character"))
        );
        assert_eq!(
            classify_utf8("user\u{FF05}evil.example@example.com"),
            Ok(Routed("look-alike of a routing character"))
        );
        assert_eq!(classify_utf8("ü@bad_domain.example"), Err(PathError::BadDomain));
        assert_eq!(classify_utf8("ü\u{0085}@example.com"), Err(PathError::BadCharacter));
        for hidden in ["\u{203C}", "\u{FE15}", "\u{FE13}", "\u{FE10}", "\u{2049}", "\u{FE6B}"] {
            let path = format!("evil.example{hidden}user@example.com");
            assert_eq!(classify_utf8(&path), Ok(Routed("look-alike of a routing character")), "{hidden:?}");
        }
        assert_eq!(
            classify_utf8("ｕｓｅｒ@example.com"),
            Ok(Domain("example.com".into())),
            "full-width letters route nowhere"
        );
    }
}
