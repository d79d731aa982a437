//! understudy heartbeat (in progress).
