package jsonstream

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// ErrNullDocument is the Err of the *DocumentError for a NULL document,
// unless WithSkipNull is given.
var ErrNullDocument = errors.New("jsonstream: NULL document")

// errNilRows is returned for a nil *sql.Rows.
var errNilRows = errors.New("jsonstream: nil *sql.Rows")

// ColumnError reports a result whose shape does not hold documents. Each,
// ForEach, WriteNDJSON and WriteJSONArray check the shape before the first
// row: the document column must be the only column, or the one named with
// Column, and its DatabaseTypeName must be JSON, JSONB, TEXT or VARCHAR (in
// any case). BPCHAR, INT4, BYTEA and the rest are refused. A driver that
// reports no type name ("", as lib/pq does for types it does not know) is
// trusted; its values are then checked row by row, and a value that is
// neither []byte nor string is a *DocumentError.
type ColumnError struct {
	// Column is the name of the offending column; "" when the error is
	// about the number of columns.
	Column string
	// DatabaseType is the column's type as the driver names it (INT4 for a
	// PostgreSQL integer); "" when Column is unknown.
	DatabaseType string
	// Reason says what is wrong.
	Reason string
}

// Error names the column and its type when they are known.
func (e *ColumnError) Error() string {
	if e.Column == "" && e.DatabaseType == "" {
		return "jsonstream: " + e.Reason
	}
	if e.DatabaseType == "" {
		return fmt.Sprintf("jsonstream: column %q: %s", e.Column, e.Reason)
	}
	return fmt.Sprintf("jsonstream: column %q (%s): %s", e.Column, e.DatabaseType, e.Reason)
}

// maxExcerpt bounds DocumentError.Excerpt, in bytes.
const maxExcerpt = 64

// DocumentError reports a document that could not be used: NULL
// (ErrNullDocument), not JSON, not valid UTF-8, or not decodable into the
// requested type. The rows are closed by the time it is returned.
type DocumentError struct {
	// Row is the 1-based position of the row in the result, counting any
	// rows skipped by WithSkipNull.
	Row int64
	// Excerpt is at most 64 bytes of the document, valid UTF-8 (invalid
	// bytes are replaced by U+FFFD): the start, or the part around the
	// error when the error gives its offset (as *json.SyntaxError does);
	// "..." marks a cut. Empty for a NULL document.
	Excerpt string
	// Err is the cause: ErrNullDocument, or the error of the decoder or of
	// the validity check.
	Err error
}

// Error names the row and quotes the excerpt.
func (e *DocumentError) Error() string {
	msg := "jsonstream: row " + strconv.FormatInt(e.Row, 10)
	if e.Err != nil {
		msg += ": " + strings.TrimPrefix(e.Err.Error(), "jsonstream: ")
	}
	if e.Excerpt != "" {
		msg += " in document " + strconv.Quote(e.Excerpt)
	}
	return msg
}

// Unwrap returns Err.
func (e *DocumentError) Unwrap() error { return e.Err }

// newDocumentError builds the error for doc, which the caller may reuse
// once it returns: the excerpt is a copy.
func newDocumentError(row int64, doc []byte, err error) *DocumentError {
	off := -1
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		off = int(syn.Offset)
	case errors.As(err, &typ):
		off = int(typ.Offset)
	}
	return &DocumentError{Row: row, Excerpt: excerpt(doc, off), Err: err}
}

// excerpt returns at most maxExcerpt bytes of doc as valid UTF-8: the
// start, or a window ending a little after off when off lies beyond the
// first part. off < 0 means no known position.
func excerpt(doc []byte, off int) string {
	const ellipsis = "..."
	const after = 16 // bytes shown past off, where the decoder stopped
	start := 0
	if off > maxExcerpt-len(ellipsis)-after && len(doc) > maxExcerpt {
		end := min(off+after, len(doc))
		room := maxExcerpt - len(ellipsis)
		if end < len(doc) {
			room -= len(ellipsis)
		}
		start = end - room
		for start < len(doc) && !utf8.RuneStart(doc[start]) {
			start++
		}
	}
	var b strings.Builder
	budget := maxExcerpt
	if start > 0 {
		b.WriteString(ellipsis)
		budget -= len(ellipsis)
	}
	if rest := doc[start:]; len(rest) <= budget && utf8.Valid(rest) {
		b.Write(rest)
		return b.String()
	}
	for i := start; i < len(doc); {
		r, size := utf8.DecodeRune(doc[i:])
		need := utf8.RuneLen(r) // 3 for the U+FFFD that replaces a bad byte
		if i+size < len(doc) {
			need += len(ellipsis) // room for the mark of a cut after this rune
		}
		if need > budget {
			b.WriteString(ellipsis)
			break
		}
		b.WriteRune(r)
		budget -= utf8.RuneLen(r)
		i += size
	}
	return b.String()
}

// JSONOption configures Each, ForEach, WriteNDJSON and WriteJSONArray.
// Options are checked when applied: a bad value makes the call fail with an
// error wrapping ErrInvalidOption that names the option and the value.
// An option that does not concern a function (WithUnmarshal for the
// writers, WithFlushEvery for Each and ForEach) is checked and ignored.
type JSONOption func(*jsonConfig) error

// jsonConfig is what JSONOptions configure.
type jsonConfig struct {
	column     string // "": the only column
	skipNull   bool
	unmarshal  func(data []byte, v any) error
	flushEvery int
	// writeTimeout bounds each write of WriteNDJSON and WriteJSONArray;
	// 0 for none.
	writeTimeout time.Duration
}

// DefaultFlushEvery is how many documents the writers write between two
// flushes of a writer that can flush.
const DefaultFlushEvery = 256

func newJSONConfig(opts []JSONOption) (jsonConfig, error) {
	c := jsonConfig{unmarshal: json.Unmarshal, flushEvery: DefaultFlushEvery}
	for _, o := range opts {
		if o == nil {
			return c, fmt.Errorf("%w: nil JSONOption", ErrInvalidOption)
		}
		if err := o(&c); err != nil {
			return c, err
		}
	}
	return c, nil
}

// WithColumn takes the documents from the column called name, which must
// be the only column of that name, and ignores the other columns. Without
// it the result must have exactly one column.
func WithColumn(name string) JSONOption {
	return func(c *jsonConfig) error {
		if name == "" {
			return invalid("WithColumn", strconv.Quote(name), "empty name")
		}
		c.column = name
		return nil
	}
}

// Column is WithColumn.
//
// Deprecated: use WithColumn, named as the other options are.
func Column(name string) JSONOption { return WithColumn(name) }

// WithSkipNull skips rows whose document is NULL. Without it, a NULL
// document ends the iteration with a *DocumentError wrapping
// ErrNullDocument.
func WithSkipNull() JSONOption {
	return func(c *jsonConfig) error {
		c.skipNull = true
		return nil
	}
}

// SkipNull is WithSkipNull.
//
// Deprecated: use WithSkipNull, named as the other options are.
func SkipNull() JSONOption { return WithSkipNull() }

// WithUnmarshal makes Each and ForEach decode documents with f instead of
// json.Unmarshal. data is valid only during the call (it may be the
// driver's buffer): f must not keep it or any part of it, which
// json.Unmarshal never does. A nil f is an invalid option.
func WithUnmarshal(f func(data []byte, v any) error) JSONOption {
	return func(c *jsonConfig) error {
		if f == nil {
			return invalid("WithUnmarshal", "nil", "nil function")
		}
		c.unmarshal = f
		return nil
	}
}

// WithFlushEvery makes WriteNDJSON and WriteJSONArray flush a writer that
// can flush every n documents; the default is DefaultFlushEvery. n must be
// positive.
func WithFlushEvery(n int) JSONOption {
	return func(c *jsonConfig) error {
		if n <= 0 {
			return invalid("WithFlushEvery", n, "must be positive")
		}
		c.flushEvery = n
		return nil
	}
}

// WithWriteTimeout bounds each write of WriteNDJSON and WriteJSONArray to
// w, and each flush, by d: a client that stops reading for longer fails
// the writing with an error wrapping ErrClientGone and
// os.ErrDeadlineExceeded, and the stream stops. Unlike
// http.Server.WriteTimeout, which bounds the whole response, it lets a
// long export run as long as the client keeps reading.
//
// w must have a write deadline: an http.ResponseWriter whose connection
// supports one (http.ResponseController.SetWriteDeadline), or a writer
// with a SetWriteDeadline method, such as a net.Conn; otherwise the
// writer returns an error wrapping ErrInvalidOption before writing
// anything. The deadline of the last write stays on w. Each and ForEach
// ignore it.
func WithWriteTimeout(d time.Duration) JSONOption {
	return func(c *jsonConfig) error {
		if d <= 0 {
			return invalid("WithWriteTimeout", d, "must be positive")
		}
		c.writeTimeout = d
		return nil
	}
}

// documentTypes are the DatabaseTypeNames accepted for the document
// column, in upper case. "" is a driver that does not say.
var documentTypes = map[string]bool{"JSON": true, "JSONB": true, "TEXT": true, "VARCHAR": true, "": true}

// docColumn checks the shape of rows and returns the number of columns and
// the index of the document column.
func docColumn(rows *sql.Rows, want string) (n, idx int, err error) {
	types, err := rows.ColumnTypes()
	if err != nil {
		return 0, 0, err
	}
	names := make([]string, len(types))
	for i, t := range types {
		names[i] = t.Name()
	}
	idx = -1
	switch {
	case want == "" && len(types) != 1:
		return 0, 0, &ColumnError{Reason: fmt.Sprintf(
			"want 1 column, got %d (%s); name the document column with Column",
			len(types), strings.Join(names, ", "))}
	case want == "":
		idx = 0
	default:
		for i, name := range names {
			if name != want {
				continue
			}
			if idx >= 0 {
				return 0, 0, &ColumnError{Column: want, Reason: "more than one column has this name"}
			}
			idx = i
		}
		if idx < 0 {
			return 0, 0, &ColumnError{Column: want, Reason: fmt.Sprintf(
				"no such column in the result (%s)", strings.Join(names, ", "))}
		}
	}
	typ := types[idx].DatabaseTypeName()
	if !documentTypes[strings.ToUpper(typ)] {
		return 0, 0, &ColumnError{Column: names[idx], DatabaseType: typ,
			Reason: "want a json, jsonb, text or varchar column"}
	}
	return len(types), idx, nil
}

// docReader reads the document column of rows. The work on each document
// happens inside Scan, through docScanner: database/sql holds the rows'
// lock during Scan, so the driver's buffer (lib/pq hands out json and
// jsonb values in its read buffer) cannot be reused by a concurrent close,
// as when the query's context ends, while the document is being used.
type docReader struct {
	rows     *sql.Rows
	skipNull bool
	dest     []any
	doc      docScanner
	// row is the position of the current row in the result, 1-based.
	row int64
}

// newDocReader checks the shape of rows and prepares to hand each
// document to use. use gets the row number and the document, which it
// must not keep past the call; its error ends the reading as it is.
func newDocReader(rows *sql.Rows, c *jsonConfig, use func(row int64, doc []byte) error) (*docReader, error) {
	n, idx, err := docColumn(rows, c.column)
	if err != nil {
		return nil, err
	}
	r := &docReader{rows: rows, skipNull: c.skipNull, dest: make([]any, n)}
	r.doc.use = func(doc []byte) error { return use(r.row, doc) }
	for i := range r.dest {
		r.dest[i] = discardColumn{}
	}
	r.dest[idx] = &r.doc
	return r, nil
}

// next reads the next row with a document and passes the document to use.
// It returns false at the end of the rows (err is rows.Err()) or with the
// error that ends the reading.
func (r *docReader) next() (bool, error) {
	for r.rows.Next() {
		r.row++
		if err := r.rows.Scan(r.dest...); err != nil {
			return false, err
		}
		if r.doc.panicked {
			p := r.doc.panicValue
			r.doc.panicked, r.doc.panicValue = false, nil
			panic(p)
		}
		switch {
		case r.doc.badType != "":
			return false, &DocumentError{Row: r.row, Err: fmt.Errorf(
				"jsonstream: got a %s value, want []byte or string", r.doc.badType)}
		case r.doc.null && r.skipNull:
			continue
		case r.doc.null:
			return false, &DocumentError{Row: r.row, Err: ErrNullDocument}
		case r.doc.err != nil:
			return false, r.doc.err
		}
		return true, nil
	}
	return false, r.rows.Err()
}

// docScanner is the Scan destination of the document column. It hands the
// value to use while database/sql still holds the rows' lock; see
// docReader.
type docScanner struct {
	use func(doc []byte) error
	// buf holds a string value as bytes, reused from row to row.
	buf []byte

	// The outcome of the last Scan.
	null    bool
	badType string
	err     error
	// A panic in use is caught and raised again once Scan has returned:
	// database/sql does not release the rows' lock when Scan panics, and
	// closing the rows would then wait for it forever.
	panicked   bool
	panicValue any
}

// Scan implements sql.Scanner. It always returns nil and leaves the
// outcome in s, so that errors reach the caller without database/sql's
// wrapping.
func (s *docScanner) Scan(src any) error {
	s.null, s.badType, s.err = false, "", nil
	var doc []byte
	switch v := src.(type) {
	case nil:
		s.null = true
		return nil
	case []byte:
		doc = v
	case string:
		s.buf = append(s.buf[:0], v...)
		doc = s.buf
	default:
		s.badType = fmt.Sprintf("%T", src)
		return nil
	}
	defer func() {
		if p := recover(); p != nil {
			s.panicked, s.panicValue = true, p
		}
	}()
	s.err = s.use(doc)
	return nil
}

// discardColumn is the Scan destination of the columns other than the
// document's; it costs no copy.
type discardColumn struct{}

// Scan implements sql.Scanner.
func (discardColumn) Scan(any) error { return nil }

// Each returns the documents of rows, one per row, decoded into T: by
// json.Unmarshal, or the function given with WithUnmarshal, once the
// document is checked to be valid UTF-8 (json.Unmarshal would replace
// invalid bytes with U+FFFD). A T of type json.RawMessage or []byte
// receives a copy of the document as the driver returned it, neither
// decoded nor checked (json and jsonb values are valid JSON; text values
// may not be).
//
// A document is decoded as json.Unmarshal decodes it: the JSON null
// (jsonb's 'null', as '{"a":null}'::jsonb->'a' gives, unlike an SQL NULL)
// leaves T's zero value, a nil *T for a pointer, so use *T to tell it
// apart; a number decoded into an interface is a float64, rounded past
// 2^53: WithUnmarshal with a json.Decoder's UseNumber keeps its digits.
//
// Each checks the shape of rows (see ColumnError) before the first row.
// The first error ends the sequence: it is yielded with the zero T, once
// rows are closed, and is a *ColumnError, a *DocumentError (a NULL,
// undecodable or malformed document, or a value that is not []byte or
// string), or the error of rows. A bad option is an error wrapping
// ErrInvalidOption.
//
// Each closes rows when the sequence ends, including when the loop stops
// early or panics. Stopping early closes the rows at once; jsonstream rows
// then stop the query as their CloseMode says. The sequence can be ranged
// over once. Pause, Resume and the pause timeout of jsonstream rows apply
// as they do to rows.Next: a paused stream yields nothing until resumed.
func Each[T any](rows *sql.Rows, opts ...JSONOption) iter.Seq2[T, error] {
	return func(yield func(T, error) bool) {
		var zero T
		if rows == nil {
			yield(zero, errNilRows)
			return
		}
		defer rows.Close() //nolint:errcheck // errors reach the loop through rows.Err; after an early stop no one is left to tell
		// fail closes rows first, so the connection is back in the pool
		// (or cut) by the time the loop body sees the error.
		fail := func(err error) {
			_ = rows.Close()
			yield(zero, err)
		}
		c, err := newJSONConfig(opts)
		if err != nil {
			fail(err)
			return
		}
		var v T
		var use func(row int64, doc []byte) error
		switch p := any(&v).(type) {
		case *json.RawMessage:
			use = func(_ int64, doc []byte) error {
				*p = bytes.Clone(doc)
				return nil
			}
		case *[]byte:
			use = func(_ int64, doc []byte) error {
				*p = bytes.Clone(doc)
				return nil
			}
		default:
			unmarshal := c.unmarshal
			use = func(row int64, doc []byte) error {
				// encoding/json takes invalid UTF-8 in strings and puts
				// U+FFFD in its place: checked first, so that no byte of a
				// document changes in silence.
				if !utf8.Valid(doc) {
					return newDocumentError(row, doc, errInvalidUTF8)
				}
				// A fresh value each row: decoding into the last one would
				// merge the documents.
				v = zero
				if err := unmarshal(doc, &v); err != nil {
					return newDocumentError(row, doc, err)
				}
				return nil
			}
		}
		r, err := newDocReader(rows, &c, use)
		if err != nil {
			fail(err)
			return
		}
		for {
			ok, err := r.next()
			if err != nil {
				fail(err)
				return
			}
			if !ok || !yield(v, nil) {
				return
			}
		}
	}
}

// ForEach calls fn with each document of rows decoded into T, as Each
// does, and returns the first error: that of Each, or that of fn, which
// stops the iteration and is returned as it is. It closes rows before it
// returns, also when fn panics. A nil fn is an error wrapping
// ErrInvalidOption.
func ForEach[T any](rows *sql.Rows, fn func(T) error, opts ...JSONOption) error {
	if fn == nil {
		if rows != nil {
			_ = rows.Close()
		}
		return fmt.Errorf("%w: ForEach with a nil function", ErrInvalidOption)
	}
	for v, err := range Each[T](rows, opts...) {
		if err != nil {
			return err
		}
		if err := fn(v); err != nil {
			return err
		}
	}
	return nil
}
