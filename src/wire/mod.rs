//! Layer 0: bytes ⇄ values, with no I/O.
//!
//! Everything here is pure and byte-identical to Python rpyc 6.0.2:
//! [`brine`] for values (`rpyc/core/brine.py`), [`message`] for the framing
//! of requests and replies and the boxing labels (`rpyc/core/protocol.py`,
//! `consts.py`), [`vinegar`] for exceptions (`rpyc/core/vinegar.py`) and a
//! serde bridge so Rust types convert to and from [`Value`].

pub mod brine;
pub mod literal;
pub mod message;
pub mod serde_bridge;
pub mod value;
pub mod vinegar;

pub use brine::{BrineError, DecodeLimits};
pub use message::{Dialect, Handler, IdPack};
pub use serde_bridge::{from_value, to_value, ConvertError};
pub use value::{Int, Value};
pub use vinegar::Exception;
