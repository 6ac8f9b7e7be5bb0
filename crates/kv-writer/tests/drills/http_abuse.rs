//! Drill: to be written.
