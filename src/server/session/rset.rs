//! RSET and the end of a transaction at the backend.

use super::{Session, Step};
use crate::smtp::Asked;
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn rset(&mut self) -> Step {
        self.reset_transaction().await?;
        self.reply("250 2.0.0 Ok");
        Ok(())
    }

    /// Ends any open transaction here and at the backend. A backend inside a DATA body
    /// (BDAT converted to DATA) would read RSET as message text: that connection is
    /// dropped instead, which abandons the message.
    pub(super) async fn reset_transaction(&mut self) -> Step {
        let Some(tx) = self.phase.transaction() else {
            self.phase.end_transaction();
            return Ok(());
        };
        let data_open = tx.chunks.as_ref().is_some_and(|c| c.holds_data_open());
        self.abort_filters().await;
        if data_open {
            self.abandon_transaction();
            return Ok(());
        }
        self.end_transaction();
        if let Some(up) = self.idle.as_mut() {
            match up.command(b"RSET\r\n", Asked::Rset).await {
                Ok(r) if r.is_positive() => {}
                Ok(r) => {
                    tracing::warn!(backend = %up.address, reply = ?r.first_line(), "backend refused RSET; reconnecting later");
                    self.idle = None;
                }
                Err(e) => {
                    tracing::warn!(backend = %up.address, error = ?e.to_string(), "backend failed at RSET; reconnecting later");
                    self.idle = None;
                }
            }
        }
        Ok(())
    }
}
