//! `#[derive(Entity)]` for larder.
//!
//! **Not semver-stable.** Use the macro through the `larder` facade (`larder::Entity`, behind
//! its default `derive` feature). Generated code refers to items only through
//! `::larder::__private`.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, LitStr, Path, Type};

/// Derives `larder::Entity` for a struct with named fields.
///
/// ```ignore
/// use larder::Entity;
///
/// #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Entity)]
/// #[larder(document, table = "orders")]
/// struct Order {
///     id: String,
///     #[larder(indexed)]
///     status: String,
///     #[larder(indexed, column = "total_cents")]
///     total: i64,
///     lines: Vec<String>, // lives only in the JSON body
/// }
///
/// #[derive(Debug, Clone, Entity)]
/// #[larder(table = "customers", name = "customer")]
/// struct Customer {
///     #[larder(id)]
///     number: i64,
///     #[larder(column = "display_name", indexed)]
///     name: String,
///     age: Option<i64>,
///     #[larder(with = "tier_text", type = "text")]
///     tier: Tier,
///     #[larder(skip)]
///     cache: Vec<u8>,
/// }
/// ```
///
/// # Container attributes (`#[larder(...)]` on the struct)
///
/// - `table = "orders"`: the table (default: the struct name in snake case).
/// - `name = "order"`: the entity name used in errors and spans (default: the struct name in
///   snake case).
/// - `document`: stores the entity as a JSON body ([`Storage::Document`]); the struct must
///   implement serde's `Serialize` and `DeserializeOwned`. Without it every field gets a
///   column ([`Storage::Columns`]).
/// - `index = "country, score"` (or `index(country, score)`): a multi-column index on these
///   fields' columns, in this order (2 to 8 stored fields; repeat the attribute for more
///   indexes), created by `Store::register` as `<table>_<col1>_<col2>_idx` and checked on
///   existing tables. Prefer the string form when several indexes share a field: clippy's
///   `duplicated_attributes` lint misreads a field named in two `index(…)` lists.
///
/// # Field attributes (`#[larder(...)]` on a field)
///
/// - `id`: the id field (exactly one; without any, a field named `id` is the id). Its type
///   must implement `FieldValue` with type int, text or uuid and must not be an `Option`.
/// - `indexed`: creates an index on the field's column. In document mode only the id and the
///   `indexed` fields get columns (kept in step with the body); the other fields live only in
///   the body.
/// - `column = "col"`: stores the field in another column (specifications still use the Rust
///   field name).
/// - `skip` (columns mode only): not stored; restored with `Default::default()`.
/// - `with = "path::to::module", type = "text"`: converts through
///   `module::to_value(&T) -> Value` and
///   `module::from_value(Value) -> Result<T, String>` instead of `FieldValue`. `type` is one
///   of `bool`, `int`, `float`, `text`, `uuid`, `json`; add the `nullable` flag when the
///   conversion may produce `NULL`.
///
/// Field types without `with` must implement `FieldValue`; a field's registered name is its
/// Rust name (raw identifiers such as `r#type` are registered unraw, as `type`).
///
/// # Checked at compile time
///
/// Table, field and column names match `[a-z_][a-z0-9_]{0,62}` and do not start with
/// `_larder`; no column is called `version` (nor `body` in document mode); columns are unique;
/// there is exactly one id; the id is int, text or uuid and not nullable; attribute keys and
/// `type` values are known and used where they make sense. Enums, unions, tuple and unit
/// structs and generic structs are rejected.
///
/// [`Storage::Document`]: https://docs.rs/larder/latest/larder/enum.Storage.html
/// [`Storage::Columns`]: https://docs.rs/larder/latest/larder/enum.Storage.html
#[proc_macro_derive(Entity, attributes(larder))]
pub fn derive_entity(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as DeriveInput);
    expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// The path every generated item goes through.
fn p() -> TokenStream2 {
    quote!(::larder::__private)
}

const NAME_RULE: &str =
    "names must match `[a-z_][a-z0-9_]{0,62}` and must not start with `_larder`";
const VERSION_COLUMN: &str = "version";
const BODY_COLUMN: &str = "body";

/// Collects several errors so that one compilation reports all of them.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    fn err(&mut self, span: Span, msg: impl std::fmt::Display) {
        self.push(syn::Error::new(span, msg));
    }

    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }

    /// Adds a fatal error and returns everything collected so far.
    fn fail(self, e: syn::Error) -> syn::Error {
        match self.0 {
            Some(mut all) => {
                all.combine(e);
                all
            }
            None => e,
        }
    }
}

/// Same grammar as `larder_core::entity::is_safe_identifier`, plus the `_larder` prefix rule.
fn is_usable_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
        && !s.starts_with("_larder")
}

/// `OrderLine` → `order_line`, `HTTPRequest` → `http_request`.
fn snake_case(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                let prev = chars[i - 1];
                let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
                if prev.is_lowercase()
                    || prev.is_ascii_digit()
                    || (prev.is_uppercase() && next_lower)
                {
                    out.push('_');
                }
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Sets a flag attribute (`#[larder(id)]`), rejecting values and repeats.
fn set_flag(slot: &mut Option<Span>, meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) || meta.input.peek(syn::token::Paren) {
        return Err(meta.error(format_args!("`{key}` is a flag and takes no value")));
    }
    if slot.is_some() {
        return Err(meta.error(format_args!("duplicate `{key}`")));
    }
    *slot = Some(meta.path.span());
    Ok(())
}

/// Sets a `key = "value"` attribute, rejecting repeats.
fn set_str(slot: &mut Option<LitStr>, meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<()> {
    if slot.is_some() {
        return Err(meta.error(format_args!("duplicate `{key}`")));
    }
    let lit: LitStr = meta.value()?.parse()?;
    *slot = Some(lit);
    Ok(())
}

#[derive(Default)]
struct ContainerAttrs {
    table: Option<LitStr>,
    name: Option<LitStr>,
    document: Option<Span>,
    /// `index(a, b, …)`: multi-column indexes, field names in order.
    indexes: Vec<(Span, Vec<syn::Ident>)>,
}

impl ContainerAttrs {
    fn parse(attrs: &[syn::Attribute]) -> syn::Result<Self> {
        let mut out = ContainerAttrs::default();
        for attr in attrs.iter().filter(|a| a.path().is_ident("larder")) {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("table") {
                    set_str(&mut out.table, &meta, "table")
                } else if meta.path.is_ident("name") {
                    set_str(&mut out.name, &meta, "name")
                } else if meta.path.is_ident("document") {
                    set_flag(&mut out.document, &meta, "document")
                } else if meta.path.is_ident("index") {
                    let span = meta
                        .path
                        .get_ident()
                        .map_or_else(Span::call_site, |i| i.span());
                    let mut names = Vec::new();
                    if meta.input.peek(syn::Token![=]) {
                        // `index = "country, score"`
                        let lit: LitStr = meta.value()?.parse()?;
                        for part in lit.value().split(',') {
                            let part = part.trim();
                            let ident = syn::parse_str::<syn::Ident>(part).map_err(|_| {
                                syn::Error::new(
                                    lit.span(),
                                    format_args!("`{part}` is not a field name"),
                                )
                            })?;
                            names.push(syn::Ident::new(&ident.to_string(), lit.span()));
                        }
                    } else {
                        // `index(country, score)`
                        meta.parse_nested_meta(|inner| {
                            match inner.path.get_ident() {
                                Some(i) => names.push(i.clone()),
                                None => return Err(inner.error("expected a field name")),
                            }
                            Ok(())
                        })?;
                    }
                    out.indexes.push((span, names));
                    Ok(())
                } else {
                    Err(meta.error(format_args!(
                        "unknown larder struct attribute `{}`; expected `table = \"...\"`, \
                         `name = \"...\"`, `document` or `index(field, …)`",
                        path_text(&meta.path)
                    )))
                }
            })?;
        }
        Ok(out)
    }
}

/// The storage type named by `type = "..."` on a `with` field.
#[derive(Clone, Copy)]
enum Kind {
    Bool,
    Int,
    Float,
    Text,
    Uuid,
    Json,
}

impl Kind {
    fn parse(lit: &LitStr) -> syn::Result<Self> {
        Ok(match lit.value().as_str() {
            "bool" => Kind::Bool,
            "int" => Kind::Int,
            "float" => Kind::Float,
            "text" => Kind::Text,
            "uuid" => Kind::Uuid,
            "json" => Kind::Json,
            other => {
                return Err(syn::Error::new(
                    lit.span(),
                    format_args!(
                        "unknown field type `{other}`; expected one of bool, int, float, text, \
                         uuid, json"
                    ),
                ));
            }
        })
    }

    fn tokens(self) -> TokenStream2 {
        let p = p();
        let variant = match self {
            Kind::Bool => quote!(Bool),
            Kind::Int => quote!(Int),
            Kind::Float => quote!(Float),
            Kind::Text => quote!(Text),
            Kind::Uuid => quote!(Uuid),
            Kind::Json => quote!(Json),
        };
        quote!(#p::FieldType::#variant)
    }
}

#[derive(Default)]
struct FieldAttrs {
    id: Option<Span>,
    indexed: Option<Span>,
    column: Option<LitStr>,
    skip: Option<Span>,
    with: Option<(LitStr, Path)>,
    ty: Option<(LitStr, Kind)>,
    nullable: Option<Span>,
}

impl FieldAttrs {
    fn parse(attrs: &[syn::Attribute]) -> syn::Result<Self> {
        let mut out = FieldAttrs::default();
        for attr in attrs.iter().filter(|a| a.path().is_ident("larder")) {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("id") {
                    set_flag(&mut out.id, &meta, "id")
                } else if meta.path.is_ident("indexed") {
                    set_flag(&mut out.indexed, &meta, "indexed")
                } else if meta.path.is_ident("skip") {
                    set_flag(&mut out.skip, &meta, "skip")
                } else if meta.path.is_ident("nullable") {
                    set_flag(&mut out.nullable, &meta, "nullable")
                } else if meta.path.is_ident("column") {
                    set_str(&mut out.column, &meta, "column")
                } else if meta.path.is_ident("with") {
                    if out.with.is_some() {
                        return Err(meta.error("duplicate `with`"));
                    }
                    let lit: LitStr = meta.value()?.parse()?;
                    let path: Path = lit.parse().map_err(|_| {
                        syn::Error::new(
                            lit.span(),
                            "`with` takes a module path, like `with = \"my::conversions\"`",
                        )
                    })?;
                    out.with = Some((lit, path));
                    Ok(())
                } else if meta.path.is_ident("type") {
                    if out.ty.is_some() {
                        return Err(meta.error("duplicate `type`"));
                    }
                    let lit: LitStr = meta.value()?.parse()?;
                    let kind = Kind::parse(&lit)?;
                    out.ty = Some((lit, kind));
                    Ok(())
                } else {
                    Err(meta.error(format_args!(
                        "unknown larder field attribute `{}`; expected one of `id`, `indexed`, \
                         `column = \"...\"`, `skip`, `with = \"...\"`, `type = \"...\"`, \
                         `nullable`",
                        path_text(&meta.path)
                    )))
                }
            })?;
        }
        Ok(out)
    }
}

fn path_text(path: &Path) -> String {
    quote!(#path).to_string().replace(' ', "")
}

/// One struct field with its parsed attributes.
struct FieldInfo<'a> {
    ident: &'a Ident,
    /// The registered name: the unraw Rust field name.
    name: String,
    ty: &'a Type,
    attrs: FieldAttrs,
}

impl FieldInfo<'_> {
    fn column(&self) -> (String, Span) {
        match &self.attrs.column {
            Some(lit) => (lit.value(), lit.span()),
            None => (self.name.clone(), self.ident.span()),
        }
    }

    /// `<T as FieldValue>`, spanned on the field's type so that a missing impl points there.
    fn field_value(&self) -> TokenStream2 {
        let p = p();
        let ty = self.ty;
        quote_spanned!(ty.span()=> <#ty as #p::FieldValue>)
    }

    fn field_def(&self, indexed: bool) -> TokenStream2 {
        let p = p();
        let name = &self.name;
        let (column, _) = self.column();
        let (ty, nullable) = match (&self.attrs.with, &self.attrs.ty) {
            (Some(_), Some((_, kind))) => {
                let nullable = self.attrs.nullable.is_some();
                (kind.tokens(), quote!(#nullable))
            }
            _ => {
                let fv = self.field_value();
                (quote!(#fv::TYPE), quote!(#fv::NULLABLE))
            }
        };
        quote! {
            #p::FieldDef {
                name: #name,
                column: #column,
                ty: #ty,
                nullable: #nullable,
                indexed: #indexed,
            }
        }
    }

    fn encode_expr(&self) -> TokenStream2 {
        let ident = self.ident;
        match &self.attrs.with {
            Some((_, path)) => quote!(#path::to_value(&self.#ident)),
            None => {
                let fv = self.field_value();
                quote!(#fv::to_value(&self.#ident))
            }
        }
    }

    /// An expression converting `__larder_v` to the field's type, or an early `Err` return.
    fn decode_expr(&self, entity: &str) -> TokenStream2 {
        let p = p();
        let msg = format!("field `{}`: {{}}", self.name);
        let conv = match &self.attrs.with {
            Some((_, path)) => quote!(#path::from_value(__larder_v)),
            None => {
                let fv = self.field_value();
                quote!(#fv::from_value(__larder_v))
            }
        };
        quote! {
            #conv.map_err(|__larder_e| {
                #p::mapping_error(#entity, "decode", ::std::format!(#msg, __larder_e))
            })?
        }
    }
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let struct_ident = &input.ident;
    let named = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(f) => &f.named,
            Fields::Unnamed(_) => {
                return Err(syn::Error::new(
                    struct_ident.span(),
                    "#[derive(Entity)] supports structs with named fields only, not tuple structs",
                ));
            }
            Fields::Unit => {
                return Err(syn::Error::new(
                    struct_ident.span(),
                    "#[derive(Entity)] does not support unit structs: an entity needs an id field",
                ));
            }
        },
        Data::Enum(e) => {
            return Err(syn::Error::new(
                e.enum_token.span,
                "#[derive(Entity)] supports structs with named fields only, not enums",
            ));
        }
        Data::Union(u) => {
            return Err(syn::Error::new(
                u.union_token.span,
                "#[derive(Entity)] supports structs with named fields only, not unions",
            ));
        }
    };
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &input.generics,
            "#[derive(Entity)] does not support generic structs (entities need one `'static` registry)",
        ));
    }
    if let Some(w) = &input.generics.where_clause {
        return Err(syn::Error::new_spanned(
            w,
            "#[derive(Entity)] does not support where clauses",
        ));
    }

    let container = ContainerAttrs::parse(&input.attrs)?;
    let document = container.document.is_some();
    let mut errors = Errors::default();

    // Entity name and table.
    let default_name = snake_case(&struct_ident.unraw().to_string());
    let entity_name = match &container.name {
        Some(lit) => {
            let v = lit.value();
            if v.trim().is_empty() {
                errors.err(lit.span(), "the entity name cannot be empty");
            }
            v
        }
        None => default_name.clone(),
    };
    let table = match &container.table {
        Some(lit) => {
            let v = lit.value();
            if !is_usable_name(&v) {
                errors.err(
                    lit.span(),
                    format_args!("table name `{v}` is not usable: {NAME_RULE}"),
                );
            }
            v
        }
        None => {
            if !is_usable_name(&default_name) {
                errors.err(
                    struct_ident.span(),
                    format_args!(
                        "the default table name `{default_name}` (from the struct name) is not \
                         usable: {NAME_RULE}; set one with #[larder(table = \"...\")]"
                    ),
                );
            }
            default_name.clone()
        }
    };

    // Fields and their attributes.
    let mut fields = Vec::with_capacity(named.len());
    for f in named {
        let ident = f.ident.as_ref().expect("named fields have identifiers");
        match FieldAttrs::parse(&f.attrs) {
            Ok(attrs) => fields.push(FieldInfo {
                ident,
                name: ident.unraw().to_string(),
                ty: &f.ty,
                attrs,
            }),
            Err(e) => errors.push(e),
        }
    }

    // The id.
    let marked: Vec<usize> = (0..fields.len())
        .filter(|&i| fields[i].attrs.id.is_some())
        .collect();
    for &i in marked.iter().skip(1) {
        let span = fields[i].attrs.id.unwrap_or_else(|| fields[i].ident.span());
        errors.err(
            span,
            "more than one field is marked #[larder(id)]; an entity has exactly one id",
        );
    }
    let id_index = marked
        .first()
        .copied()
        .or_else(|| fields.iter().position(|f| f.name == "id"));
    let Some(id_index) = id_index else {
        return Err(errors.fail(syn::Error::new(
            struct_ident.span(),
            "no id field: mark one field with #[larder(id)] or name it `id`",
        )));
    };

    // Per-field attribute combinations.
    for (i, f) in fields.iter().enumerate() {
        let a = &f.attrs;
        if let Some(skip) = a.skip {
            if document {
                errors.err(
                    skip,
                    "`skip` is not available in document mode: every field is in the JSON body \
                     (use #[serde(skip)] there instead)",
                );
            }
            if i == id_index {
                errors.err(skip, "the id field cannot be skipped");
            }
            let others = [
                a.indexed.map(|_| "indexed"),
                a.column.as_ref().map(|_| "column"),
                a.with.as_ref().map(|_| "with"),
                a.ty.as_ref().map(|_| "type"),
                a.nullable.map(|_| "nullable"),
            ];
            for key in others.into_iter().flatten() {
                errors.err(skip, format_args!("`skip` cannot be combined with `{key}`"));
            }
        }
        if let (Some((lit, _)), None) = (&a.ty, &a.with) {
            errors.err(
                lit.span(),
                "`type` only applies together with `with = \"...\"` (other fields take their \
                 type from `FieldValue`)",
            );
        }
        if let (Some(span), None) = (a.nullable, &a.with) {
            errors.err(
                span,
                "`nullable` only applies together with `with = \"...\"` (use `Option<T>` for other \
                 fields)",
            );
        }
        if let (Some((lit, _)), None) = (&a.with, &a.ty) {
            errors.err(
                lit.span(),
                "`with` needs the storage type too: add `type = \"...\"` (one of bool, int, \
                 float, text, uuid, json)",
            );
        }
        if i == id_index {
            if let Some(span) = a.indexed {
                errors.err(
                    span,
                    "the id is the primary key and always indexed; remove `indexed`",
                );
            }
            if let Some((lit, _)) = &a.with {
                errors.err(
                    lit.span(),
                    "`with` is not supported on the id: its type must implement `FieldValue`",
                );
            }
        } else if document && a.indexed.is_none() && a.skip.is_none() {
            let mut no_column = |span: Span, key: &str| {
                errors.err(
                    span,
                    format_args!(
                        "`{key}` has no effect here: in document mode only the id and \
                         #[larder(indexed)] fields have columns"
                    ),
                );
            };
            if let Some(lit) = &a.column {
                no_column(lit.span(), "column");
            }
            if let Some((lit, _)) = &a.with {
                no_column(lit.span(), "with");
            }
        }
    }

    // The registered fields: the id, then the stored ones.
    let registered: Vec<&FieldInfo<'_>> = fields
        .iter()
        .enumerate()
        .filter(|&(i, f)| {
            i != id_index
                && if document {
                    f.attrs.indexed.is_some()
                } else {
                    f.attrs.skip.is_none()
                }
        })
        .map(|(_, f)| f)
        .collect();
    let id_field = &fields[id_index];

    let mut columns: Vec<String> = Vec::new();
    for f in std::iter::once(id_field).chain(registered.iter().copied()) {
        if !is_usable_name(&f.name) {
            errors.err(
                f.ident.span(),
                format_args!("field name `{}` is not usable: {NAME_RULE}", f.name),
            );
        }
        let (column, span) = f.column();
        if !is_usable_name(&column) {
            if f.attrs.column.is_none() {
                // Already reported as a bad field name.
                continue;
            }
            errors.err(
                span,
                format_args!("column name `{column}` is not usable: {NAME_RULE}"),
            );
        } else if column == VERSION_COLUMN {
            errors.err(
                span,
                "the column `version` is reserved for larder's version counter; store the field \
                 elsewhere with #[larder(column = \"...\")]",
            );
        } else if document && column == BODY_COLUMN {
            errors.err(
                span,
                "the column `body` is reserved for the JSON body of document entities; store \
                 the field elsewhere with #[larder(column = \"...\")]",
            );
        } else if columns.contains(&column) {
            errors.err(
                span,
                format_args!("the column `{column}` is used by more than one field"),
            );
        }
        columns.push(column);
    }

    // Multi-column indexes: registered fields (with a column), 2 to 8, no repeats.
    let mut index_defs: Vec<Vec<String>> = Vec::new();
    for (span, names) in &container.indexes {
        if names.len() < 2 || names.len() > 8 {
            errors.err(
                *span,
                "index(…) takes 2 to 8 fields; index one field with #[larder(indexed)]",
            );
            continue;
        }
        let mut seen: Vec<String> = Vec::new();
        for n in names {
            let name = n.unraw().to_string();
            if seen.contains(&name) {
                errors.err(
                    n.span(),
                    format_args!("`{name}` appears twice in this index"),
                );
            }
            let known = std::iter::once(id_field)
                .chain(registered.iter().copied())
                .any(|f| f.name == name);
            if !known {
                let hint = if document {
                    "; in a document entity only the id and #[larder(indexed)] fields have columns"
                } else {
                    ""
                };
                errors.err(
                    n.span(),
                    format_args!("`{name}` is not a stored field of this entity{hint}"),
                );
            }
            seen.push(name);
        }
        index_defs.push(seen);
    }
    errors.finish()?;

    let layout = Layout {
        entity: &entity_name,
        table: &table,
        document,
        indexes: &index_defs,
    };
    Ok(generate(input, &layout, &fields, id_field, &registered))
}

/// The entity-level facts `generate` needs.
struct Layout<'a> {
    entity: &'a str,
    table: &'a str,
    document: bool,
    /// Multi-column indexes: field names in order.
    indexes: &'a [Vec<String>],
}

fn generate(
    input: &DeriveInput,
    layout: &Layout<'_>,
    fields: &[FieldInfo<'_>],
    id_field: &FieldInfo<'_>,
    registered: &[&FieldInfo<'_>],
) -> TokenStream2 {
    let Layout {
        entity,
        table,
        document,
        indexes,
    } = *layout;
    let p = p();
    let index_defs = indexes
        .iter()
        .map(|names| quote!(#p::IndexDef::new(&[#(#names),*])));
    let ident = &input.ident;
    let id_ident = id_field.ident;
    let id_ty = id_field.ty;
    let id_fv = id_field.field_value();
    let id_def = id_field.field_def(false);
    let defs = registered
        .iter()
        .map(|f| f.field_def(f.attrs.indexed.is_some()));
    let values = registered.iter().map(|f| f.encode_expr());
    let storage = if document {
        quote!(Document)
    } else {
        quote!(Columns)
    };
    let id_assert_msg = format!(
        "the id of `{ident}` (field `{}`) must be an int, text or uuid `FieldValue` and cannot \
         be nullable",
        id_field.name
    );
    let id_assert = quote_spanned! {id_ty.span()=>
        const _: () = ::core::assert!(
            ::core::matches!(
                #id_fv::TYPE,
                #p::FieldType::Int | #p::FieldType::Text | #p::FieldType::Uuid
            ) && !#id_fv::NULLABLE,
            #id_assert_msg
        );
    };

    let (body, from_record) = if document {
        let encode = quote_spanned!(ident.span()=> #p::encode_body::<#ident>);
        let decode = quote_spanned!(ident.span()=> #p::decode_body::<#ident>);
        (
            quote! {
                ::core::option::Option::Some(#encode(<Self as #p::Entity>::def(), self)?)
            },
            quote! {
                #decode(<Self as #p::Entity>::def(), &__larder_record)
            },
        )
    } else {
        let n = registered.len();
        let count_msg = format!("expected {n} field values, found {{}}");
        let id_conv = id_field.decode_expr(entity);
        let mut lets = Vec::with_capacity(registered.len());
        let mut inits = Vec::with_capacity(fields.len());
        inits.push(quote!(#id_ident: __larder_id));
        for (i, f) in registered.iter().enumerate() {
            let local = Ident::new(&format!("__larder_f{i}"), Span::call_site());
            let fty = f.ty;
            let conv = f.decode_expr(entity);
            let missing = format!("missing value for field `{}`", f.name);
            lets.push(quote! {
                let #local: #fty = match ::core::iter::Iterator::next(&mut __larder_values) {
                    ::core::option::Option::Some(__larder_v) => #conv,
                    ::core::option::Option::None => {
                        return ::core::result::Result::Err(
                            #p::mapping_error(#entity, "decode", #missing),
                        );
                    }
                };
            });
            let fident = f.ident;
            inits.push(quote!(#fident: #local));
        }
        for f in fields.iter().filter(|f| f.attrs.skip.is_some()) {
            let fident = f.ident;
            inits.push(quote!(#fident: ::core::default::Default::default()));
        }
        (
            quote!(::core::option::Option::None),
            quote! {
                let __larder_count = __larder_record.values.len();
                if __larder_count != #n {
                    return ::core::result::Result::Err(#p::mapping_error(
                        #entity,
                        "decode",
                        ::std::format!(#count_msg, __larder_count),
                    ));
                }
                let __larder_id: #id_ty = {
                    let __larder_v = __larder_record.id;
                    #id_conv
                };
                let mut __larder_values = ::core::iter::IntoIterator::into_iter(__larder_record.values);
                #(#lets)*
                ::core::result::Result::Ok(Self { #(#inits),* })
            },
        )
    };

    quote! {
        #id_assert

        #[automatically_derived]
        impl #p::Entity for #ident {
            type Id = #id_ty;

            fn def() -> &'static #p::EntityDef {
                static DEF: #p::LazyLock<#p::EntityDef> = #p::LazyLock::new(|| #p::EntityDef {
                    name: #entity,
                    table: #table,
                    storage: #p::Storage::#storage,
                    id: #id_def,
                    fields: ::std::vec![#(#defs),*],
                    indexes: ::std::vec![#(#index_defs),*],
                });
                &DEF
            }

            fn id(&self) -> #id_ty {
                ::core::clone::Clone::clone(&self.#id_ident)
            }

            fn to_record(&self) -> #p::Result<#p::Record> {
                ::core::result::Result::Ok(#p::Record {
                    id: #id_fv::to_value(&self.#id_ident),
                    version: 0,
                    values: ::std::vec![#(#values),*],
                    body: #body,
                })
            }

            fn from_record(__larder_record: #p::Record) -> #p::Result<Self> {
                #from_record
            }
        }
    }
}

/// Embeds migration modules into the binary at compile time.
///
/// `embed_migrations!("db")` reads every `db/<module>/migrations/` folder (relative to the
/// calling crate's `Cargo.toml`) and expands to a `&'static [EmbeddedModule]`. Files are
/// included with `include_str!`, so editing one rebuilds the crate; parsing happens at run
/// time with the same rules and errors as `larder migrate --dir`.
#[proc_macro]
pub fn embed_migrations(input: TokenStream) -> TokenStream {
    let lit = syn::parse_macro_input!(input as LitStr);
    match embed(&lit) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn embed(lit: &LitStr) -> syn::Result<TokenStream2> {
    let err = |msg: String| syn::Error::new(lit.span(), msg);
    let base = std::env::var("CARGO_MANIFEST_DIR")
        .map_err(|_| err("CARGO_MANIFEST_DIR is not set".into()))?;
    let root = std::path::Path::new(&base).join(lit.value());
    let entries = std::fs::read_dir(&root)
        .map_err(|e| err(format!("cannot read {}: {e}", root.display())))?;
    let mut modules: Vec<(String, std::path::PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| err(e.to_string()))?;
        let dir = entry.path().join("migrations");
        if dir.is_dir() {
            modules.push((entry.file_name().to_string_lossy().into_owned(), dir));
        }
    }
    modules.sort();
    let mut out = Vec::new();
    for (name, dir) in modules {
        let mut files: Vec<(String, String)> = Vec::new();
        for f in std::fs::read_dir(&dir)
            .map_err(|e| err(format!("cannot read {}: {e}", dir.display())))?
        {
            let f = f.map_err(|e| err(e.to_string()))?;
            let file = f.file_name().to_string_lossy().into_owned();
            if f.path().is_file() && (file.ends_with(".sql") || file == "module.toml") {
                files.push((file, f.path().display().to_string()));
            }
        }
        files.sort();
        let entries = files
            .iter()
            .map(|(file, path)| quote! { (#file, include_str!(#path)) });
        out.push(quote! {
            ::larder::migrate::EmbeddedModule { name: #name, files: &[#(#entries),*] }
        });
    }
    Ok(quote! { { const MODULES: &[::larder::migrate::EmbeddedModule] = &[#(#out),*]; MODULES } })
}
