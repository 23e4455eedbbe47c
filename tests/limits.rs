//! Connection limits over real sockets: per client address and in total.

mod support;

use support::*;

#[test]
fn connections_per_address_and_in_total() {
    init_logs();
    let dead = format!("127.0.0.1:{}", free_port());
    let proxy = Proxy::start(&format!(
        "[[listener]]\nname = \"mx\"\nbind = \"127.0.0.1:0\"\n[[backend]]\naddress = \"{dead}\"\n\
         [limits]\nmax_connections = 4\nmax_connections_per_ip = 2\n"
    ));
    let mx = proxy.addr("mx");
    let mut held = vec![Smtp::hello("127.0.0.50", mx), Smtp::hello("127.0.0.50", mx)];
    let mut third = Smtp::connect_from("127.0.0.50", mx);
    assert_eq!(third.reply(), "421 4.7.0 Too many connections, try again later\r\n");
    held.push(Smtp::hello("127.0.0.51", mx));
    held.push(Smtp::hello("127.0.0.52", mx));
    let mut fifth = Smtp::connect_from("127.0.0.53", mx);
    assert_eq!(fifth.reply(), "421 4.7.0 Too many connections, try again later\r\n");
    // A place is given back when a session ends.
    held[0].cmd("QUIT", "221");
    held.remove(0);
    wait_until(
        std::time::Duration::from_secs(5),
        || {
            let mut c = Smtp::connect_from("127.0.0.50", mx);
            c.reply().starts_with("220 ")
        },
        "a freed place",
    );
}
