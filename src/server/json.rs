//! Extractors whose rejections are JSON `AppError`s instead of axum's plain text.

use axum::extract::{FromRequest, FromRequestParts};

use super::error::AppError;

/// `axum::Json`, rejecting with an [`AppError`].
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(AppError))]
pub struct Json<T>(pub T);

/// `axum::extract::Query`, rejecting with an [`AppError`].
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(AppError))]
pub struct Query<T>(pub T);

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}
