//! What the controller reads before it decides anything.

pub mod pods;
