//! The wire: everything client and server must agree on, byte for byte.
//!
//! One definition shared by both sides (and the fuzz targets), one idea a
//! module:
//!
//! - [`stream`]: the sqlite3_rsync byte stream and its parser;
//! - [`summary`]: what one direction of a sync did;
//! - [`control`]: sqlrsync's control frames and the one rule ([`classify`])
//!   that tells them from stream data;
//! - [`delta`]: the frames of a delta sync (our extension);
//! - [`texts`]: the server's `CONFIG=`/`MESSAGE=`/`ABORT=` texts and the
//!   subscribe messages, and how a server's text is made visible and
//!   bounded before it is shown;
//! - [`paths`]: remote replica paths, for the command line and a
//!   server's `replicaPath`;
//! - [`refs`]: version references (`@7`, `@latest-2`);
//! - [`headers`]: the upgrade's HTTP headers and visibility;
//! - [`framing`]: how large a frame may be, and the header that offers more;
//! - [`versions`]: our server's versions listing (JSON, paged);
//! - [`keys`]: key shapes;
//! - [`limits`]: every bound on what a peer may send.
//!
//! The most used names are re-exported here, so callers write
//! `wire::StreamParser` rather than a path per module.

pub mod control;
pub mod delta;
pub mod framing;
pub mod headers;
pub mod keys;
pub mod limits;
pub mod paths;
pub mod refs;
pub mod stream;
pub mod summary;
pub mod texts;
pub mod versions;

pub use control::*;
pub use framing::*;
pub use headers::Visibility;
pub use keys::*;
pub use limits::*;
pub use paths::*;
pub use refs::*;
pub use stream::*;
pub use summary::*;
pub use texts::*;
