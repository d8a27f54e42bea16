//! joinblock: a native per-member lock and Action Network tag check for the join-block
//! WordPress plugin. `lock` and `config` are plain Rust; `php` binds them to PHP.

mod backoff;
pub mod config;
pub mod lock;
mod php;
