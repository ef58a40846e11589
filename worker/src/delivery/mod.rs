//! Delivering email, in four stages, each a module with one job:
//!
//! 1. [`prepare`]: the task's record (its id, or the email a Python
//!    producer's arguments describe, recorded under the task's id).
//! 2. [`domains`], then [`admit`]: the recipient domains' throttles;
//!    quota on the best accounts, their throttles, and during a switch the
//!    Python platform's count; the records are then claimed for the
//!    accounts that took them (`platform::db::messages::claim`).
//! 3. [`attempt`]: one SMTP transaction (suppression checked again, the
//!    email composed, sent within the soft time limit).
//! 4. [`settle`]: the outcome recorded (outlasting a database outage) and
//!    the Celery result stored; a failure goes through [`policy`], which
//!    alone decides between failing, retrying and changing account.
//!
//! [`pipeline`] runs the stages for the send tasks that arrived together
//! (a single send is a group of one) up to the claim; [`sending`] runs
//! the claimed sends and settles each as it finishes, with those that
//! finished about the same time.

pub mod admit;
pub mod attempt;
pub mod backlog;
pub mod domains;
pub mod pipeline;
pub mod policy;
pub mod prepare;
pub mod sending;
pub mod settle;

pub use pipeline::deliver;
