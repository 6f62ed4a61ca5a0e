//! One module per subcommand: an `Args` struct (its doc comments are the help) and `run`.

pub mod build;
pub mod commit;
pub mod container;
pub mod df;
pub mod diff;
pub mod export;
pub mod fsck;
pub mod gc;
pub mod history;
pub mod images;
pub mod import;
pub mod inspect;
pub mod layer;
pub mod load;
pub mod login;
pub mod logout;
pub mod mount;
pub mod pull;
pub mod push;
pub mod rmi;
pub mod run;
pub mod save;
pub mod tag;
