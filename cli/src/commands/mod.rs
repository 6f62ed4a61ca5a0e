//! One module per subcommand: an `Args` struct (its doc comments are the help) and `run`.

pub mod container;
pub mod df;
pub mod fsck;
pub mod gc;
pub mod history;
pub mod images;
pub mod import;
pub mod inspect;
pub mod layer;
pub mod mount;
pub mod rmi;
pub mod tag;
