package jsonstream

import (
	"reflect"
	"sync"
	"unsafe"

	"github.com/lib/pq"
)

// serverError builds the *pq.Error lib/pq builds for an ErrorResponse or
// NoticeResponse body, with the query text lib/pq attaches: the one its
// Error uses for "at column N" and ErrorWithDetail for the excerpt.
//
// lib/pq attaches the query to an error of the statement (its simple
// query, and Parse, Bind or Describe in the extended protocol), not to one
// that comes while rows are read (rows.Next), nor to a notice: pass ""
// there. A FATAL error lib/pq reports as driver.ErrBadConn instead; that
// is the caller's to do. A body that ends before its terminating zero
// byte, on which lib/pq panics, gives the fields read until there. The
// body's length is the caller's to check first: lib/pq reads an
// ErrorResponse whose body is under 4 or over 30000 bytes as unframed
// text up to a zero byte, and returns it as "pq: server error: ...".
func serverError(body []byte, query string) *pq.Error {
	pe, _, _, _ := scanErrorFields(body)
	if query != "" {
		setErrorQuery(pe, query)
	}
	return pe
}

// errorQueryField is the index of pq.Error's unexported query field, nil
// when lib/pq has no string field of that name (a version this code does
// not know; TestWireServerErrorQueryField fails then).
var errorQueryField = sync.OnceValue(func() []int {
	f, ok := reflect.TypeFor[pq.Error]().FieldByName("query")
	if !ok || f.Type != reflect.TypeFor[string]() {
		return nil
	}
	return f.Index
})

// setErrorQuery sets e's unexported query field to q, as lib/pq's
// parseError and handleError do. lib/pq offers no way to set it, and
// without it Error and ErrorWithDetail lose the position in the query;
// reflect finds the field, and reflect.NewAt on its address makes it
// settable, which a plain reflect.Value of an unexported field is not. It
// reports whether the field was there.
func setErrorQuery(e *pq.Error, q string) bool {
	idx := errorQueryField()
	if idx == nil {
		return false
	}
	f := reflect.ValueOf(e).Elem().FieldByIndex(idx)
	reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().SetString(q)
	return true
}
