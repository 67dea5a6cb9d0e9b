//! Generating the begin endpoint.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::{FnArg, ItemFn, LitStr, spanned::Spanned as _};

use crate::attr::{EarlyPoll, OperationArgs};

/// Checks the function and generates a unit struct, named like the function,
/// that registers the begin endpoint when given to `App::service`.
pub(crate) fn expand(args: OperationArgs, mut function: ItemFn) -> syn::Result<TokenStream> {
    // The struct takes the function's visibility; the function itself moves
    // inside `register`, where a visibility would mean nothing.
    let vis = std::mem::replace(&mut function.vis, syn::Visibility::Inherited);
    let sig = &function.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span(),
            "#[async_operation] needs an `async fn`: the handler's body runs in the background",
        ));
    }
    // `new_spanned` underlines the whole `<...>` (or `where ...`): a joined
    // `span()` would be only its first token on stable Rust.
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "#[async_operation] handlers cannot be generic: actix-web needs one concrete handler",
        ));
    }
    if let Some(where_clause) = &sig.generics.where_clause {
        return Err(syn::Error::new_spanned(
            where_clause,
            "#[async_operation] handlers cannot have a `where` clause",
        ));
    }
    let mut arg_types = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => {
                return Err(syn::Error::new_spanned(
                    receiver,
                    "#[async_operation] handlers cannot take `self`: use a free `async fn` whose arguments are extractors",
                ));
            }
            FnArg::Typed(typed) => arg_types.push(&typed.ty),
        }
    }
    if let Some(extra) = sig.inputs.iter().nth(15) {
        return Err(syn::Error::new_spanned(
            extra,
            "#[async_operation] handlers take at most 15 extractors",
        ));
    }

    let name = &sig.ident;
    let resource_name = args
        .name
        .clone()
        .unwrap_or_else(|| LitStr::new(&name.to_string(), name.span()));
    let path = &args.path;
    let method = format_ident!("{}", args.method.constant());
    let retry_after = option(args.retry_after);
    let retention = option(args.retention);
    let long_poll = option(args.long_poll);
    let doc_attributes: Vec<_> = function
        .attrs
        .iter()
        .filter(|attr| attr.path().is_ident("doc"))
        .collect();
    let arg_names: Vec<_> = (0..arg_types.len())
        .map(|i| format_ident!("__async_op_arg{i}"))
        .collect();
    let krate = quote!(::async_op::__private);
    let early_poll = match args.early_poll {
        Some(EarlyPoll::Reject) => quote!(::core::option::Option::Some(#krate::EarlyPoll::Reject)),
        Some(EarlyPoll::Hold) => quote!(::core::option::Option::Some(#krate::EarlyPoll::Hold)),
        None => quote!(::core::option::Option::None),
    };
    let web = quote!(#krate::actix_web);

    // The begin wrapper takes the same extractors as the handler, so that
    // actix-web runs them on the begin request before anything starts.
    let begin = quote_spanned! {sig.span()=>
        async fn __async_op_begin(
            __async_op_request: #web::HttpRequest,
            #(#arg_names: #arg_types),*
        ) -> #web::HttpResponse {
            // `..DEFAULT` keeps this compiling when settings are added.
            #[allow(clippy::needless_update)]
            const SETTINGS: #krate::OperationSettings = #krate::OperationSettings {
                name: #resource_name,
                retry_after: #retry_after,
                retention: #retention,
                long_poll: #long_poll,
                early_poll: #early_poll,
                ..#krate::OperationSettings::DEFAULT
            };
            #krate::begin(__async_op_request, &SETTINGS, #name(#(#arg_names),*)).await
        }
    };

    Ok(quote! {
        #(#doc_attributes)*
        #[allow(non_camel_case_types, missing_docs)]
        #vis struct #name;

        impl #web::dev::HttpServiceFactory for #name {
            fn register(self, __config: &mut #web::dev::AppService) {
                #function

                #begin

                let __resource = #web::Resource::new(#path)
                    .name(#resource_name)
                    .guard(#web::guard::Method(#web::http::Method::#method))
                    .to(__async_op_begin);
                #web::dev::HttpServiceFactory::register(__resource, __config);
            }
        }
    })
}

fn option(value: Option<u32>) -> TokenStream {
    match value {
        Some(value) => quote!(::core::option::Option::Some(#value)),
        None => quote!(::core::option::Option::None),
    }
}
