//! RFC 3461 delivery status notification parameters, checked before they are passed on:
//! MAIL's RET and ENVID, RCPT's NOTIFY and ORCPT. A backend that supports DSN gets
//! them as the client wrote them; only well-formed ones get that far.

use super::xtext;

/// Longest ENVID value (RFC 3461 4.4).
const MAX_ENVID: usize = 100;
/// Longest ORCPT parameter, keyword included (RFC 3461 4.2).
const MAX_ORCPT: usize = 500;

/// `RET=FULL` or `RET=HDRS`.
pub(crate) fn ret_ok(value: &str) -> bool {
    value.eq_ignore_ascii_case("FULL") || value.eq_ignore_ascii_case("HDRS")
}

/// `ENVID=xtext`, printable ASCII once decoded, at most 100 characters.
pub(crate) fn envid_ok(value: &str) -> bool {
    !value.is_empty() && value.len() <= MAX_ENVID && printable_xtext(value)
}

/// `NOTIFY=NEVER`, or a list of SUCCESS, FAILURE and DELAY, each at most once.
pub(crate) fn notify_ok(value: &str) -> bool {
    if value.eq_ignore_ascii_case("NEVER") {
        return true;
    }
    let mut seen = Vec::new();
    for word in value.split(',') {
        let known = ["SUCCESS", "FAILURE", "DELAY"].iter().find(|k| word.eq_ignore_ascii_case(k));
        match known {
            Some(k) if !seen.contains(k) => seen.push(k),
            _ => return false,
        }
    }
    !seen.is_empty()
}

/// `ORCPT=addr-type;xtext`: an atom naming the address type (`rfc822`, or RFC 6533's
/// `utf-8`), then the original recipient in xtext.
pub fn orcpt_ok(value: &str) -> bool {
    if "ORCPT=".len() + value.len() > MAX_ORCPT {
        return false;
    }
    let Some((addr_type, address)) = value.split_once(';') else { return false };
    let atom = !addr_type.is_empty() && addr_type.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    atom && !address.is_empty() && printable_xtext(address)
}

fn printable_xtext(text: &str) -> bool {
    !text.contains('=') && xtext::decode(text).is_some_and(|bytes| bytes.iter().all(|&b| (0x21..=0x7e).contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify() {
        for ok in ["NEVER", "never", "SUCCESS", "SUCCESS,FAILURE", "delay,Failure,SUCCESS"] {
            assert!(notify_ok(ok), "{ok}");
        }
        for bad in ["", "NEVER,SUCCESS", "SUCCESS,SUCCESS", "ALWAYS", "SUCCESS,", ","] {
            assert!(!notify_ok(bad), "{bad}");
        }
    }

    #[test]
    fn orcpt_envid_ret() {
        assert!(orcpt_ok("rfc822;u@example.com"));
        assert!(orcpt_ok("rfc822;a+2Bb@example.com"));
        assert!(orcpt_ok("utf-8;J\\x{00F8}rn@example.com"));
        for bad in ["u@example.com", "rfc822;", ";u@x", "rfc 822;u@x", "rfc822;u+2@x", "rfc822;u+0A@x"] {
            assert!(!orcpt_ok(bad), "{bad}");
        }
        assert!(!orcpt_ok(&format!("rfc822;{}@x", "a".repeat(500))));
        assert!(envid_ok("QQ314159") && !envid_ok("") && !envid_ok(&"a".repeat(101)) && !envid_ok("a+20b"));
        assert!(ret_ok("HDRS") && ret_ok("full") && !ret_ok("NONE"));
    }
}
