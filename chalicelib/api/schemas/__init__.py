"""Request and response models of the creator API, one module per resource (``common`` holds the
error shape and the text rule every resource uses). Import the module you use; this package
re-exports nothing.

The handlers validate with these models and serialise through them, and ``chalicelib.openapi``
generates the OpenAPI document from the very same classes, so the document cannot drift from
what the code accepts and returns.

Request bodies are strict (``"true"`` is not a boolean, ``5.0`` not an integer) and refuse
unknown fields. Query strings arrive as text, so query models convert ``"30"`` to 30 but refuse
anything that is not a whole number in range; unknown query parameters are ignored.

Text parameters and every text field of a body refuse control characters (NUL, C0, DEL, C1), lone
surrogates, Unicode noncharacters (U+FFFE, U+FFFF, …) and bidi overrides, embeddings and isolates
(``models.unsafe_text``) with a 400 naming the field: a NUL or a lone surrogate would reach Postgres,
which cannot store it, and none has a meaning in an id, a search, a cursor, a name or a message.
Rejecting (rather than stripping) keeps "what was searched" equal to "what was typed". Query text
also refuses U+FFFD, which is what undecodable bytes become before the handler sees them.
"""
