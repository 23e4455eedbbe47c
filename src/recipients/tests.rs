//! The live tables without a directory: files, reloads, an unreachable directory.

use super::*;
use std::io::Write;
use std::time::Duration;

fn config(extra: &str) -> crate::config::Config {
    let text = format!(
        "[[listener]]\nname = \"mx\"\nbind = \"127.0.0.1:0\"\n[[backend]]\naddress = \"127.0.0.1:10025\"\n\
         [relay]\nlocal_domains = [\"example.com\", \"example.org\", \"xn--bcher-kva.example\"]\n{extra}"
    );
    match crate::config::parse(&text) {
        Ok(loaded) => loaded.config,
        Err(e) => panic!("{e}\n{text}"),
    }
}

fn file(lines: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(lines.as_bytes()).unwrap();
    f
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn file_table_decides_its_domains_only() {
    let f = file("alice@example.com\n@example.org\njörg@bücher.example\n");
    let path = f.path().display();
    let c = config(&format!(
        "[[recipients]]\ndomains = [\"example.com\", \"example.org\", \"xn--bcher-kva.example\"]\nfile = \"{path}\"\nrecipient_delimiter = \"+\"\n"
    ));
    let r = Recipients::new(&c.recipients, None).unwrap();
    let rt = rt();
    let check = |path: &str| rt.block_on(r.check(path, !path.is_ascii()));
    assert!(
        matches!(check("alice@example.com"), Verdict::Known(d) if d.via == "file" && d.table.starts_with("recipients[0] (file "))
    );
    assert!(matches!(check("ALICE@Example.COM"), Verdict::Known(_)));
    assert!(matches!(check("alice+news@example.com"), Verdict::Known(d) if d.key == "alice@example.com"));
    assert!(matches!(check("anyone@example.org"), Verdict::Known(_)));
    assert!(matches!(check("jörg@bücher.example"), Verdict::Known(_)));
    assert!(matches!(check("postmaster@example.com"), Verdict::Known(d) if d.via == "postmaster"));
    let unknown = check("bob@example.com");
    assert!(matches!(&unknown, Verdict::Unknown(d) if d.key == "bob@example.com"), "{unknown:?}");
    assert_eq!(
        unknown.reply("bob@example.com").unwrap(),
        "550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown"
    );
    assert_eq!(check("bob@elsewhere.net"), Verdict::Untouched);
    assert_eq!(check("postmaster"), Verdict::Untouched);
    assert_eq!(check("a%b@example.com"), Verdict::Untouched);
}

#[test]
fn update_reads_the_file_again_and_keeps_the_old_tables_on_error() {
    let mut f = file("alice@example.com\n");
    let path = f.path().to_path_buf();
    let c = config(&format!("[[recipients]]\ndomains = [\"example.com\"]\nfile = \"{}\"\n", path.display()));
    let r = Recipients::new(&c.recipients, None).unwrap();
    let rt = rt();
    assert!(matches!(rt.block_on(r.check("bob@example.com", false)), Verdict::Unknown(_)));
    f.write_all(b"bob@example.com\n").unwrap();
    r.update(&c.recipients).unwrap();
    assert!(matches!(rt.block_on(r.check("bob@example.com", false)), Verdict::Known(_)));
    std::fs::remove_file(&path).unwrap();
    let e = r.update(&c.recipients).unwrap_err();
    assert!(e.to_string().contains("recipients[0].file"), "{e}");
    assert!(matches!(rt.block_on(r.check("bob@example.com", false)), Verdict::Known(_)), "the old listing stays");
}

#[test]
fn an_unreachable_directory_never_gives_unknown() {
    // A port nothing listens on: connection refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    for (on_error, accept) in [("tempfail", false), ("accept", true)] {
        let c = config(&format!(
            "[[recipients]]\ndomains = [\"example.com\"]\nldap = \"ldap://127.0.0.1:{port}\"\nbase = \"dc=example,dc=com\"\n\
             filter = \"(mail=%s)\"\ntimeout = \"2s\"\non_error = \"{on_error}\"\n"
        ));
        let r = Recipients::new(&c.recipients, None).unwrap();
        let rt = rt();
        for _ in 0..3 {
            let v = rt.block_on(r.check("alice@example.com", false));
            match &v {
                Verdict::Unavailable { accept: a, .. } => assert_eq!(*a, accept, "{v:?}"),
                other => panic!("{other:?}"),
            }
            let reply = v.reply("alice@example.com");
            if accept {
                assert_eq!(reply, None);
            } else {
                assert!(reply.unwrap().starts_with("451 4.4.3 <alice@example.com>"));
            }
        }
        // Nothing was cached from the failures.
        assert_eq!(r.cache.len(), 0);
    }
}

#[test]
fn a_directory_that_never_answers_is_given_up_at_the_timeout() {
    // Accepts TCP, says nothing.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let c = config(&format!(
        "[[recipients]]\ndomains = [\"example.com\"]\nldap = \"ldap://127.0.0.1:{port}\"\nbase = \"dc=example,dc=com\"\n\
         filter = \"(mail=%s)\"\ntimeout = \"300ms\"\n"
    ));
    let r = Recipients::new(&c.recipients, None).unwrap();
    let started = std::time::Instant::now();
    let v = rt().block_on(r.check("alice@example.com", false));
    assert!(
        matches!(&v, Verdict::Unavailable { accept: false, error, .. } if error.contains("timeout") || error.contains("300ms")),
        "{v:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_hanging_directory_gathers_no_queue() {
    // Accepts TCP (the kernel's backlog), never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let c = config(&format!(
        "[[recipients]]\ndomains = [\"example.com\"]\nldap = \"ldap://127.0.0.1:{port}\"\nbase = \"dc=example,dc=com\"\n\
         filter = \"(mail=%s)\"\ntimeout = \"300ms\"\n"
    ));
    let r = Arc::new(Recipients::new(&c.recipients, None).unwrap());
    let started = std::time::Instant::now();
    let verdicts = rt().block_on(async {
        let mut lookups = tokio::task::JoinSet::new();
        for i in 0..400 {
            let r = r.clone();
            lookups.spawn(async move { r.check(&format!("user{i}@example.com"), false).await });
        }
        lookups.join_all().await
    });
    assert!(verdicts.iter().all(|v| matches!(v, Verdict::Unavailable { accept: false, .. })), "{:?}", verdicts.first());
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let tables = r.tables.load();
    let Lookup::Directory(d) = &tables[0].lookup else { panic!("a directory") };
    assert_eq!(d.waiting(), 0, "nothing left waiting on the directory's thread");
}

#[test]
fn an_address_without_a_key_in_a_table_domain_is_unknown() {
    let f = file("alice@example.com\n");
    let c = config(&format!("[[recipients]]\ndomains = [\"example.com\"]\nfile = \"{}\"\n", f.path().display()));
    let r = Recipients::new(&c.recipients, None).unwrap();
    let rt = rt();
    assert!(matches!(rt.block_on(r.check("\"\"@example.com", false)), Verdict::Unknown(_)));
    assert!(matches!(rt.block_on(r.check("\"\"@elsewhere.test", false)), Verdict::Untouched));
}
