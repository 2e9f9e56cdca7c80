//! ringwire
pub mod proto;
