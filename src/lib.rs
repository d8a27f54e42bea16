//! joinblock: a native per-member lock and Action Network tag check for the join-block
//! WordPress plugin. `lock`, `action_network` and `config` are plain Rust; `php` binds them
//! to PHP.

pub mod action_network;
mod backoff;
pub mod config;
mod leftover;
pub mod lock;
mod php;
