//! Generating the begin endpoint.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::{FnArg, ItemFn, LitStr, spanned::Spanned as _};

use crate::attr::OperationArgs;

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
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "#[async_operation] handlers cannot be generic",
        ));
    }
    let mut arg_types = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => {
                return Err(syn::Error::new(
                    receiver.span(),
                    "#[async_operation] handlers cannot take `self`: use a free `async fn` whose arguments are extractors",
                ));
            }
            FnArg::Typed(typed) => arg_types.push(&typed.ty),
        }
    }
    if arg_types.len() > 15 {
        return Err(syn::Error::new(
            sig.inputs.span(),
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
    let doc_attributes: Vec<_> = function
        .attrs
        .iter()
        .filter(|attr| attr.path().is_ident("doc"))
        .collect();
    let arg_names: Vec<_> = (0..arg_types.len())
        .map(|i| format_ident!("__async_op_arg{i}"))
        .collect();
    let krate = quote!(::async_op::__private);
    let web = quote!(#krate::actix_web);

    // The begin wrapper takes the same extractors as the handler, so that
    // actix-web runs them on the begin request before anything starts.
    let begin = quote_spanned! {sig.span()=>
        async fn __async_op_begin(
            __async_op_request: #web::HttpRequest,
            #(#arg_names: #arg_types),*
        ) -> #web::HttpResponse {
            const SETTINGS: #krate::OperationSettings = #krate::OperationSettings {
                name: #resource_name,
                retry_after: #retry_after,
                retention: #retention,
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
