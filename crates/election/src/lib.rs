//! understudy election (in progress).
