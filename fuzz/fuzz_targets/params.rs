//! MAIL and RCPT parameters. Properties: a MAIL line whose parameters pass the check
//! reaches any backend as one CRLF line, no longer than the client's, that parses to
//! the same path (the null sender `<>` too) with some of the client's parameters in
//! order, only ones that backend advertised; what may not be dropped (SMTPUTF8, RET,
//! ENVID, BODY=BINARYMIME) is refused rather than dropped, AUTH= never goes on, and a
//! backend that takes everything gets the client's own bytes. A wider offer never
//! refuses what a narrower one took. RCPT: only NOTIFY and ORCPT pass, each once,
//! never toward a backend without DSN; an ORCPT address is printable ASCII once
//! decoded and passes again once re-encoded; xtext decodes what it encodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::smtp::command::{self, Command};
use portcullis::smtp::ehlo::Offer;
use portcullis::smtp::{Capabilities, Param, dsn, mail, rcpt, xtext};

fuzz_target!(|line: &[u8]| {
    match command::parse(line) {
        Ok(Command::Mail { path, params }) => {
            mail_line(line, path, &params);
            xtext_round_trips(&params);
        }
        Ok(Command::Rcpt { params, .. }) => {
            rcpt_params(&params);
            xtext_round_trips(&params);
        }
        _ => {}
    }
});

const MAX_SIZE: u64 = 10_000_000;

/// Every combination of the extensions that depend on the backend, widest last.
fn offers() -> impl Iterator<Item = Offer> {
    (0..8u8).map(|bits| Offer {
        max_size: MAX_SIZE,
        starttls: false,
        auth: true,
        dsn: bits & 1 != 0,
        smtputf8: bits & 2 != 0,
        binarymime: bits & 4 != 0,
        held: false,
    })
}

/// Every combination of the backend capabilities the MAIL line depends on.
fn backends() -> impl Iterator<Item = Capabilities> {
    (0..64u8).map(|bits| Capabilities {
        size: bits & 1 != 0,
        eight_bit_mime: bits & 2 != 0,
        dsn: bits & 4 != 0,
        smtputf8: bits & 8 != 0,
        chunking: bits & 16 != 0,
        binarymime: bits & 32 != 0,
        ..Capabilities::default()
    })
}

fn is(p: &Param<'_>, keyword: &str) -> bool {
    p.keyword.eq_ignore_ascii_case(keyword)
}

fn binary(p: &Param<'_>) -> bool {
    is(p, "BODY") && p.value.is_some_and(|v| v.eq_ignore_ascii_case("BINARYMIME"))
}

/// Whether `caps` advertised the extension that defines `p`.
fn advertised(caps: &Capabilities, p: &Param<'_>) -> bool {
    if binary(p) {
        caps.chunking && caps.binarymime
    } else if is(p, "BODY") {
        caps.eight_bit_mime
    } else if is(p, "SIZE") {
        caps.size
    } else if is(p, "SMTPUTF8") {
        caps.smtputf8
    } else {
        (is(p, "RET") || is(p, "ENVID")) && caps.dsn
    }
}

/// Parameters whose loss changes the transaction (the address form, the notifications
/// the sender gets, the body's encoding).
fn must_keep(p: &Param<'_>) -> bool {
    is(p, "SMTPUTF8") || is(p, "RET") || is(p, "ENVID") || binary(p)
}

fn mail_line(line: &[u8], path: &str, params: &[Param<'_>]) {
    let offers: Vec<Offer> = offers().collect();
    let widest = offers[offers.len() - 1];
    let accepted = mail::check(path, params, true, &widest);
    for offer in &offers {
        if let Ok(declared) = mail::check(path, params, true, offer) {
            assert_eq!(Ok(declared), accepted, "a wider offer refused what {offer:?} took");
        }
    }
    // After HELO: no parameters at all, otherwise the same.
    assert_eq!(mail::check(path, params, false, &widest).is_ok(), accepted.is_ok() && params.is_empty());
    let Ok(declared) = accepted else { return };
    assert!(declared.size.is_none_or(|size| size <= MAX_SIZE));
    assert!(path.is_ascii() || declared.smtputf8, "a UTF-8 sender without SMTPUTF8");

    let mut full = line.to_vec();
    full.extend_from_slice(b"\r\n");
    for caps in backends() {
        let lacking = params.iter().any(|p| must_keep(p) && !advertised(&caps, p));
        let out = match mail::for_backend(&caps, &full, path, params) {
            Ok(out) => out,
            Err(refusal) => {
                assert!(lacking, "{refusal:?} toward {caps:?}");
                continue;
            }
        };
        assert!(!lacking, "a parameter that may not be dropped was dropped toward {caps:?}");
        assert!(out.len() <= full.len());
        let text = out.strip_suffix(b"\r\n").expect("the line for a backend ends in CRLF");
        assert!(!text.contains(&b'\r') && !text.contains(&b'\n'), "more than one line: {out:?}");
        let Ok(Command::Mail { path: sent_path, params: sent }) = command::parse(text) else {
            panic!("the line for a backend does not parse: {out:?}");
        };
        assert_eq!(sent_path, path);
        // The client's own parameters, in order, each one the backend advertised.
        let mut client = params.iter();
        assert!(sent.iter().all(|s| client.any(|p| p == s)), "{sent:?} not taken from {params:?}");
        assert!(sent.iter().all(|p| advertised(&caps, p)), "{sent:?} toward {caps:?}");
        assert!(params.iter().filter(|p| must_keep(p)).all(|p| sent.contains(p)));
        let every = caps.size && caps.eight_bit_mime && caps.dsn && caps.smtputf8 && caps.chunking && caps.binarymime;
        if every && !params.iter().any(|p| is(p, "AUTH")) {
            assert_eq!(out, full, "a backend that takes everything gets the client's bytes");
        }
    }
}

fn rcpt_params(params: &[Param<'_>]) {
    let dsn_offer = Offer { dsn: true, ..Offer::default() };
    if rcpt::check(params, &dsn_offer).is_err() {
        return;
    }
    for (i, p) in params.iter().enumerate() {
        assert!(is(p, "NOTIFY") || is(p, "ORCPT"), "{p:?}");
        assert!(!params[..i].iter().any(|q| is(q, p.keyword)), "{p:?} twice");
        if is(p, "ORCPT") {
            let value = p.value.expect("ORCPT has a value");
            let (kind, address) = value.split_once(';').expect("ORCPT has an address type");
            let decoded = xtext::decode(address).expect("ORCPT is xtext");
            assert!(decoded.iter().all(|b| (0x21..=0x7e).contains(b)), "{decoded:?}");
            let again = format!("{kind};{}", xtext::encode(&String::from_utf8_lossy(&decoded)));
            assert!(dsn::orcpt_ok(&again), "{value:?} re-encoded as {again:?}");
        }
    }
    // Without DSN offered or at the backend, no parameter at all.
    assert_eq!(rcpt::check(params, &Offer::default()).is_ok(), params.is_empty());
    assert_eq!(rcpt::for_backend(&Capabilities::default(), params).is_ok(), params.is_empty());
    assert!(rcpt::for_backend(&Capabilities { dsn: true, ..Capabilities::default() }, params).is_ok());
}

/// xtext: what is encoded decodes back, and fits in a parameter value.
fn xtext_round_trips(params: &[Param<'_>]) {
    for value in params.iter().filter_map(|p| p.value) {
        let encoded = xtext::encode(value);
        assert!(encoded.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'='), "{encoded:?}");
        assert_eq!(xtext::decode(&encoded).as_deref(), Some(value.as_bytes()));
    }
}
