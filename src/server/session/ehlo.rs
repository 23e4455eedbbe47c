//! HELO and EHLO: a new greeting ends any transaction; EHLO lists what this listener
//! offers now (see [`crate::smtp::ehlo`]).

use super::{Helo, Phase, Session, Step};
use crate::config::ListenerTls;
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn hello(&mut self, name: &str, esmtp: bool) -> Step {
        self.reset_transaction().await?;
        self.phase = Phase::Greeted(Helo { name: name.to_string(), esmtp });
        if esmtp {
            let mut ehlo = format!(
                "250-{}\r\n250-PIPELINING\r\n250-SIZE {}\r\n250-8BITMIME\r\n",
                self.config.hostname, self.config.limits.max_message_size
            );
            if self.listener.tls == ListenerTls::StartTls && !self.client.is_tls() {
                ehlo.push_str("250-STARTTLS\r\n");
            }
            if self.auth_offered() {
                ehlo.push_str("250-AUTH PLAIN LOGIN\r\n");
            }
            ehlo.push_str("250 ENHANCEDSTATUSCODES");
            self.reply(&ehlo);
        } else {
            let helo = format!("250 {}", self.config.hostname);
            self.reply(&helo);
        }
        Ok(())
    }
}
