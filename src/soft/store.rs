//! The soft token's on-disk store. TO BE WRITTEN (helper).
