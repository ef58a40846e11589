//! Delivering email, in four stages, each a module with one job:
//!
//! 1. [`prepare`]: the task's record (loaded by id, or recorded from a
//!    Python producer's arguments under the task's id).
//! 2. [`admit`]: quota on the best account, its throttles, and during a
//!    switch the Python platform's count.
//! 3. [`attempt`]: one SMTP transaction (suppression checked again, the
//!    email composed, sent within the soft time limit).
//! 4. [`settle`]: the outcome recorded (outlasting a database outage) and
//!    the Celery result stored; a failure goes through [`policy`], which
//!    alone decides between failing, retrying and changing account.
//!
//! Two drivers run the stages: [`single`] takes one message through every
//! case; [`grouped`] takes many plain sends at once, one statement per stage,
//! and hands anything else back to [`single`].

pub mod admit;
pub mod attempt;
pub mod grouped;
pub mod policy;
pub mod prepare;
pub mod settle;
pub mod single;
