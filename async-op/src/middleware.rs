//! The middleware: answers the poll path and hands the configuration to the
//! begin endpoints that [`#[async_operation]`](crate::async_operation)
//! generates.

use std::{
    future::{Ready, ready},
    rc::Rc,
};

use actix_web::{
    Error, HttpMessage as _, ResponseError as _,
    body::{EitherBody, MessageBody},
    dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready},
};
use futures_util::{
    TryFutureExt as _,
    future::{Either, LocalBoxFuture, MapOk},
};

use crate::{
    config::AsyncOps,
    idempotency::{self, IDEMPOTENCY_KEY},
    poll,
};

impl<S, B> Transform<S, ServiceRequest> for AsyncOps
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Transform = AsyncOpsMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(AsyncOpsMiddleware {
            service: Rc::new(service),
            ops: self.clone(),
        }))
    }
}

/// The service [`AsyncOps`] wraps around an app.
pub struct AsyncOpsMiddleware<S> {
    service: Rc<S>,
    ops: AsyncOps,
}

type PassThrough<B, F> = MapOk<F, fn(ServiceResponse<B>) -> ServiceResponse<EitherBody<B>>>;

impl<S, B> Service<ServiceRequest> for AsyncOpsMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future =
        Either<LocalBoxFuture<'static, Result<Self::Response, Error>>, PassThrough<B, S::Future>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        if req.path() == self.ops.shared.poll_path {
            let ops = self.ops.clone();
            return Either::Left(Box::pin(async move {
                let (req, _payload) = req.into_parts();
                let res = poll::answer(&ops.shared, &req).await;
                Ok(ServiceResponse::new(req, res).map_into_right_body())
            }));
        }
        // Begin endpoints find the configuration here. Other requests pay
        // one small insert into the request's extensions.
        req.extensions_mut().insert(self.ops.clone());
        let left: fn(ServiceResponse<B>) -> ServiceResponse<EitherBody<B>> =
            ServiceResponse::map_into_left_body;
        if req.headers().contains_key(IDEMPOTENCY_KEY) {
            // Its body is read and fingerprinted before the extractors run.
            let service = Rc::clone(&self.service);
            return Either::Left(Box::pin(async move {
                let mut req = req;
                if let Err(error) = idempotency::prepare(&mut req).await {
                    let res = error.error_response();
                    return Ok(req.into_response(res).map_into_right_body());
                }
                service.call(req).await.map(left)
            }));
        }
        Either::Right(self.service.call(req).map_ok(left))
    }
}
