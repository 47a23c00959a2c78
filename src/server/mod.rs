//! sqlrsync-server: versioned replica storage behind the websocket API.
