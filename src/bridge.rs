//! Carrying the helper's stdin/stdout over a websocket (client and server).
