//! The middleware: answers the poll path and hands the configuration to the
//! begin endpoints that [`#[async_operation]`](crate::async_operation)
//! generates.

use std::{
    future::{Ready, ready},
    rc::Rc,
};

use actix_web::{
    Error, ResponseError as _,
    body::{EitherBody, MessageBody},
    dev::{Extensions, Service, ServiceRequest, ServiceResponse, Transform, forward_ready},
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
        let mut data = Extensions::new();
        data.insert(self.clone());
        ready(Ok(AsyncOpsMiddleware {
            service: Rc::new(service),
            ops: self.clone(),
            data: Rc::new(data),
        }))
    }
}

/// The service [`AsyncOps`] wraps around an app.
pub struct AsyncOpsMiddleware<S> {
    service: Rc<S>,
    ops: AsyncOps,
    /// The configuration as app data, for the begin endpoints.
    data: Rc<Extensions>,
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

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        if req.path() == self.ops.shared.poll_path {
            let ops = self.ops.clone();
            return Either::Left(Box::pin(async move {
                let (req, _payload) = req.into_parts();
                let res = poll::answer(&ops.shared, &req).await;
                Ok(ServiceResponse::new(req, res).map_into_right_body())
            }));
        }
        // Begin endpoints find the configuration as app data, the way
        // actix-web's scopes hand theirs on: a pointer pushed onto the
        // request's data stack, no allocation.
        req.add_data_container(Rc::clone(&self.data));
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
