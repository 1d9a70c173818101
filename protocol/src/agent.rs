//! The guest agent API (`protos/agent.proto`, ttrpc service `runv.agent.v1.Agent`).
//!
//! runv-agent serves it on vsock port [`crate::AGENT_VSOCK_PORT`] in the guest, or on a
//! Unix socket in host mode; the shim calls it. Process stdio travels on separate
//! stream connections ([`crate::stdio`]). Everything is re-exported here: the messages
//! (generated into [`agent`]), the sync ttrpc service trait [`Agent`], its client
//! [`AgentClient`] and [`create_agent`], the method table for
//! `ttrpc::Server::register_service` (generated into [`agent_ttrpc`]).

pub use self::agent::*;
pub use self::agent_ttrpc::*;

generated_modules!(agent, agent_ttrpc);
