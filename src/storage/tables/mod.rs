//! The queries of the inbox, users, conversation and jobs tables, one file
//! each, written once for both backends with the macros of the storage
//! module.

mod inbox;
pub use inbox::SAME_UPDATE_WITHIN;
mod jobs;
mod turns;
mod users;
