package jsonstream

import (
	"context"
)

// contextKey is the key of the contextValue in a context.
type contextKey struct{}

// contextValue is what ContextWithStream and ContextWithOptions store: one
// value for both, so that a query looks it up once.
type contextValue struct {
	stream *Stream
	// hasStream tells ContextWithStream(ctx, nil), an error at the query,
	// from a context that only carries options.
	hasStream bool
	// opts were checked when they were attached; outer ones first.
	opts []Option
}

// ContextWithStream returns a copy of ctx that carries s to a query, as if
// s were passed as one more query argument, for code that builds its query
// calls itself (sqlc, sqlx, GORM, a repository behind an interface) and
// passes only a context through. The options that ctx carries stay
// attached.
//
// A context, and every context derived from it, may reach several
// queries: a generated function that runs a count and then a select, a
// Tx shared by several calls. The rule:
//
//   - s serves one query: the first one started with the context whose rows
//     come back (Query, QueryRow, a prepared statement's Query; on a DB,
//     Conn, Tx or Stmt). A query that fails before returning rows does not
//     use it up. Exec, Prepare, BeginTx and Ping ignore it; the context of
//     a transaction is not consulted, only that of each query.
//   - Every later query with the context fails, before it is sent, with an
//     error wrapping ErrStreamArgument. Letting it run without s would be
//     worse: Pause, Resume and Cancel would act on a query that has ended
//     while the one that matters runs unobserved, and nothing would show
//     it. For a count and then a select, attach s to the select's context
//     only.
//   - A query with a Stream argument other than s fails the same way, since
//     which of the two the caller meant cannot be known; s itself as the
//     argument is allowed.
//   - A nil s makes the queries fail the same way.
//
// The options of s override those of ContextWithOptions, which override
// the connector's.
func ContextWithStream(ctx context.Context, s *Stream) context.Context {
	v := contextValue{stream: s, hasStream: true}
	if outer := fromContext(ctx); outer != nil {
		v.opts = outer.opts
	}
	return context.WithValue(ctx, contextKey{}, &v)
}

// ContextWithOptions returns a copy of ctx whose queries use opts: on top
// of the connector's settings and the options ctx already carries, below
// those of the query's Stream. Unlike a Stream, the options apply to every
// query started with the context. A bad option is an error wrapping
// ErrInvalidOption, as from NewStream.
func ContextWithOptions(ctx context.Context, opts ...Option) (context.Context, error) {
	var check settings
	if err := check.apply(opts); err != nil {
		return nil, err
	}
	var v contextValue
	if outer := fromContext(ctx); outer != nil {
		v = *outer
	}
	// A new slice: two contexts derived from one must not share appends.
	v.opts = append(append([]Option(nil), v.opts...), opts...)
	return context.WithValue(ctx, contextKey{}, &v), nil
}

func fromContext(ctx context.Context) *contextValue {
	v, _ := ctx.Value(contextKey{}).(*contextValue)
	return v
}

// queryStream returns the Stream that a query started with ctx binds to:
// arg, its Stream argument, or the context's. It reports misuse before the
// query is sent; the Stream is claimed only once the rows come back
// (wrapRows), so a query that fails leaves it for the next.
func queryStream(ctx context.Context, arg *Stream) (*Stream, error) {
	v := fromContext(ctx)
	if v == nil || !v.hasStream {
		return arg, nil
	}
	switch s := v.stream; {
	case s == nil:
		return nil, errNilContextStream
	case arg != nil && arg != s:
		return nil, errTwoStreams
	case s.claimed.Load():
		return nil, errContextStreamUsed
	default:
		return s, nil
	}
}

var (
	errNilContextStream  = streamArgError("nil *Stream in the context")
	errTwoStreams        = streamArgError("a Stream argument and another Stream in the context")
	errContextStreamUsed = streamArgError("the context's Stream already serves another query; a context with a Stream is for one query")
)
