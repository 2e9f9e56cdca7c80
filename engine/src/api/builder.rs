//! [`EngineBuilder`]: the paved way to configure and start an [`Engine`].

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use crate::api::engine::Engine;
use crate::config::Config;
use crate::error::Error;
use crate::route::handler::{Discard, Handler};

/// Builds an [`Engine`]: the node id is required, everything else has a default (see
/// [`Config`]).
pub struct EngineBuilder {
    config: Config,
    handler: Option<Arc<dyn Handler>>,
    listen: Option<Result<SocketAddr, String>>,
}

impl EngineBuilder {
    pub(crate) fn new() -> EngineBuilder {
        EngineBuilder {
            config: Config::new(""),
            handler: None,
            listen: None,
        }
    }

    /// This node's id (required).
    pub fn node_id(mut self, node_id: impl Into<String>) -> Self {
        self.config.node_id = node_id.into();
        self
    }

    /// Accept peers on `addr` (port 0 picks a free port; see [`Engine::local_addr`]).
    pub fn listen(mut self, addr: impl ToSocketAddrs) -> Self {
        self.listen = Some(match addr.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(addr)) => Ok(addr),
            Ok(None) => Err("listen address resolved to nothing".to_owned()),
            Err(e) => Err(format!("listen address: {e}")),
        });
        self
    }

    /// Number of shards (default: available cores).
    pub fn shards(mut self, shards: usize) -> Self {
        self.config.shards = shards;
        self
    }

    /// The message handler (default: [`Discard`]).
    pub fn handler(mut self, handler: impl Handler) -> Self {
        self.handler = Some(Arc::new(handler));
        self
    }

    /// Changes any other setting.
    pub fn configure(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// Starts the engine.
    ///
    /// # Errors
    ///
    /// As [`Engine::start`], plus [`Error::InvalidConfig`] for a listen address that did not
    /// resolve.
    pub fn start(mut self) -> Result<Engine, Error> {
        match self.listen.take() {
            Some(Ok(addr)) => self.config.listen = Some(addr),
            Some(Err(msg)) => return Err(Error::InvalidConfig(msg)),
            None => {}
        }
        let handler = self.handler.take().unwrap_or_else(|| Arc::new(Discard));
        Engine::start_shared(self.config, handler)
    }
}

impl fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("config", &self.config)
            .finish()
    }
}
