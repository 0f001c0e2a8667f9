//! The queries of the inbox, users, conversation and jobs tables, one file
//! each, written once for both backends with the macros of the storage
//! module.

mod inbox;
mod jobs;
mod turns;
mod users;
