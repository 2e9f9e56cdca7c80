//! Control commands from other threads: connect a peer, adopt a connection, shut down.

use crate::route::Command;

use super::COMMAND_BUDGET;
use super::State;
use super::conn::Phase;
use super::link::Link;
use super::shutdown::Shutdown;
use super::source::SourceSlot;
use crate::net::dial::DialPlan;

impl State {
    pub(super) fn run_commands(&mut self) {
        for _ in 0..COMMAND_BUDGET {
            let Some(command) = self.mailbox.commands.pop() else {
                break;
            };
            match command {
                Command::Connect { peer, config } => {
                    let index = self.ensure_peer(&peer);
                    let ps = &mut self.peers[index];
                    ps.dial = Some(DialPlan::new(config.endpoints));
                    self.start_dial(index);
                }
                Command::Adopt {
                    fd,
                    hello,
                    peer,
                    tls,
                } => {
                    let index = self.new_conn(fd, Phase::Detached);
                    if let Some(tls) = tls {
                        self.conns[index].link = Link::tls(*tls);
                    }
                    self.adopt(index, hello, peer);
                }
                Command::AddSource(source) => self.sources.push(SourceSlot::new(source)),
                Command::Shutdown { drain_until } => {
                    if self.shutdown.is_none() {
                        self.shutdown = Some(Shutdown {
                            drain_until,
                            closing_since: None,
                        });
                    }
                }
            }
        }
    }
}
