package jsonstream

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
	"unicode/utf8"
)

// writeBufferSize is the size of the buffer between the documents and the
// writer: big enough for few writes, small enough to keep memory flat.
const writeBufferSize = 32 << 10

var errInvalidUTF8 = errors.New("jsonstream: document is not valid UTF-8")

// ErrClientGone is wrapped by the error of WriteNDJSON and WriteJSONArray
// when w itself failed: its Write or Flush returned an error. For an
// http.ResponseWriter that means the client went away (a closed or reset
// connection) or a write deadline passed (http.Server.WriteTimeout,
// http.ResponseController.SetWriteDeadline), which a handler logs and
// returns from, while any other error is a failure of the query or of a
// document. w's own error stays reachable with errors.Is and errors.As.
//
// A client that leaves also ends the request's context: the writers then
// return context.Canceled when they notice that first.
var ErrClientGone = errors.New("jsonstream: writing to the client failed")

// clientGone wraps an error of w's.
func clientGone(err error) error {
	return fmt.Errorf("%w: %w", ErrClientGone, err)
}

// The trailer WriteNDJSON and WriteJSONArray send on an
// http.ResponseWriter once the body has begun, so that a client can tell
// a whole response from one cut short, however well-formed its body is:
//
//	Jsonstream-Status: complete    every document was written
//	Jsonstream-Status: failed      the writing stopped on an error, or a panic
//
// The error itself is not sent: it may say more about the server than a
// client should read. A client reads trailers after the body (in Go,
// http.Response.Trailer once Body returned io.EOF; curl shows them with
// --raw). A proxy may drop trailers, and a client that ignores them sees a
// body that ends after the last whole document: a handler that wants such
// clients to see the failure ends with panic(http.ErrAbortHandler), which
// makes net/http cut the response short without logging.
const (
	// TrailerStatus is the trailer's name.
	TrailerStatus = "Jsonstream-Status"
	// StatusComplete is its value when every document was written.
	StatusComplete = "complete"
	// StatusFailed is its value when the writing stopped on an error, or
	// on a panic that a recovering handler let the response end after.
	StatusFailed = "failed"
)

// WriteNDJSON writes the documents of rows to w as newline-delimited JSON:
// each document on a line of its own, followed by "\n". It returns the
// number of documents written.
//
// Each document is checked to be valid JSON in UTF-8, nested no deeper
// than encoding/json reads (10000 levels), and written as the driver
// returned it (jsonb comes canonical from PostgreSQL, json as it was
// stored), except that a document spanning several lines is compacted onto
// one. An empty result writes nothing.
//
// The shape of rows, the documents and the options are as for Each (see
// ColumnError, DocumentError, WithSkipNull, WithColumn); WithUnmarshal is ignored.
// See WriteJSONArray for flushing, the context, errors and closing.
func WriteNDJSON(ctx context.Context, w io.Writer, rows *sql.Rows, opts ...JSONOption) (n int64, err error) {
	return writeDocuments(ctx, w, rows, opts, false)
}

// WriteJSONArray writes the documents of rows to w as one JSON array:
// "[\n", the documents separated by ",\n", then "\n]\n"; an empty result is
// "[]\n". It returns the number of documents written. The documents are
// checked and written as by WriteNDJSON, except that they are never
// compacted.
//
// Output is buffered. When w has a Flush method (http.Flusher,
// http.ResponseWriter, bufio.Writer, gzip.Writer...), it is flushed every
// DefaultFlushEvery documents (see WithFlushEvery) and at the end;
// otherwise w receives blocks of 32 KiB and the rest at the end. A slow w
// slows the reading: nothing is read from rows while a Write blocks, so
// memory stays flat whatever the size of the result.
//
// ctx is checked before each row; once it is done, writing stops with its
// error. A Write that blocks is not interrupted by ctx: bound it with w's
// own deadline, such as http.Server.WriteTimeout.
//
// On error, nothing follows the last whole document: w has received the
// first n documents with their separators, and no closing bracket, so the
// output is not valid JSON, which is how a reader sees that it was cut
// short (when the error comes from w itself, less may have reached it).
// An error before the first document (the shape of rows, a bad option,
// the first row) leaves w untouched, so an HTTP handler can still send an
// error status.
//
// WriteNDJSON and WriteJSONArray close rows before they return, whatever
// happens.
func WriteJSONArray(ctx context.Context, w io.Writer, rows *sql.Rows, opts ...JSONOption) (n int64, err error) {
	return writeDocuments(ctx, w, rows, opts, true)
}

// errNilWriter is the writers' error for a nil io.Writer; the rows are
// closed.
var errNilWriter = errors.New("jsonstream: nil io.Writer")

// flusherFor returns the Flush of w, if it has one.
func flusherFor(w io.Writer) func() error {
	switch f := w.(type) {
	case interface{ FlushError() error }: // http.ResponseWriter's, which reports errors
		return f.FlushError
	case interface{ Flush() error }:
		return f.Flush
	case http.Flusher:
		return func() error { f.Flush(); return nil }
	}
	return nil
}

func writeDocuments(ctx context.Context, w io.Writer, rows *sql.Rows, opts []JSONOption, array bool) (n int64, err error) {
	if rows == nil {
		return 0, errNilRows
	}
	if w == nil {
		_ = rows.Close()
		return 0, errNilWriter
	}
	// began is set once anything may have reached w: from then on an
	// http.ResponseWriter gets the status trailer, which says complete
	// only once the last flush returned (finished): not on an error, nor
	// on a panic (of w, or of a handler's hook), which a recovering
	// middleware might let the response end after.
	began, finished := false, false
	defer func() {
		if cerr := rows.Close(); err == nil {
			err = cerr
		}
		if hw, ok := w.(interface{ Header() http.Header }); ok && began {
			status := StatusComplete
			if err != nil || !finished {
				status = StatusFailed
			}
			hw.Header().Set(http.TrailerPrefix+TrailerStatus, status)
		}
	}()
	c, err := newJSONConfig(opts)
	if err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}

	flush := flusherFor(w)
	out := w
	if c.writeTimeout > 0 {
		dw, err := newDeadlineWriter(w, c.writeTimeout)
		if err != nil {
			return 0, err
		}
		out = dw
		if flush != nil {
			inner := flush
			flush = func() error {
				if err := dw.arm(); err != nil {
					return err
				}
				return inner()
			}
		}
	}
	bw := bufio.NewWriterSize(out, writeBufferSize)
	var check validator
	var compacted bytes.Buffer
	use := func(row int64, doc []byte) error {
		ok, multiline := check.valid(doc)
		if !ok {
			return newDocumentError(row, doc, invalidDocument(doc))
		}
		out := doc
		if multiline && !array {
			// Line breaks outside strings (the only place they can be
			// raw) are whitespace: compacting changes nothing else.
			compacted.Reset()
			if err := json.Compact(&compacted, doc); err != nil {
				return newDocumentError(row, doc, err)
			}
			out = compacted.Bytes()
		}
		var werr error
		switch {
		case !array:
		case n == 0:
			_, werr = bw.WriteString("[\n")
		default:
			_, werr = bw.WriteString(",\n")
		}
		if werr == nil {
			_, werr = bw.Write(out)
		}
		if werr == nil && !array {
			werr = bw.WriteByte('\n')
		}
		if werr != nil {
			return clientGone(werr)
		}
		n++
		return nil
	}
	r, err := newDocReader(rows, &c, use)
	if err != nil {
		return 0, err
	}
	// stop hands w the whole documents still buffered, so that it ends on
	// a document boundary, and returns err. It closes rows first: a slow w
	// must not hold the connection.
	stop := func(err error) (int64, error) {
		_ = rows.Close()
		_ = bw.Flush()
		began = began || n > 0
		return n, err
	}
	done := ctx.Done()
	every := int64(c.flushEvery)
	for {
		select {
		case <-done:
			return stop(ctx.Err())
		default:
		}
		ok, err := r.next()
		if err != nil {
			return stop(err)
		}
		if !ok {
			break
		}
		if flush != nil && n%every == 0 {
			began = true
			if err := bw.Flush(); err != nil {
				return n, clientGone(err)
			}
			if err := flush(); err != nil {
				return n, clientGone(err)
			}
		}
	}
	began = true
	switch {
	case !array:
	case n == 0:
		_, err = bw.WriteString("[]\n")
	default:
		_, err = bw.WriteString("\n]\n")
	}
	if err == nil {
		err = bw.Flush()
	}
	if err == nil && flush != nil {
		err = flush()
	}
	if err != nil {
		return n, clientGone(err)
	}
	finished = true
	return n, nil
}

// deadlineWriter sets a write deadline of d from now on w before each
// write (WithWriteTimeout).
type deadlineWriter struct {
	w   io.Writer
	d   time.Duration
	set func(time.Time) error
}

// newDeadlineWriter finds w's write deadline, and sets it once to see
// that it works, before anything is written.
func newDeadlineWriter(w io.Writer, d time.Duration) (*deadlineWriter, error) {
	dw := &deadlineWriter{w: w, d: d}
	switch v := w.(type) {
	case interface{ SetWriteDeadline(time.Time) error }:
		dw.set = v.SetWriteDeadline
	case http.ResponseWriter:
		dw.set = http.NewResponseController(v).SetWriteDeadline
	default:
		return nil, invalid("WithWriteTimeout", d, fmt.Sprintf("a %T has no write deadline (want an http.ResponseWriter or a net.Conn)", w))
	}
	if err := dw.arm(); err != nil {
		return nil, invalid("WithWriteTimeout", d, fmt.Sprintf("the write deadline of a %T cannot be set: %v", w, err))
	}
	return dw, nil
}

func (dw *deadlineWriter) arm() error { return dw.set(time.Now().Add(dw.d)) }

func (dw *deadlineWriter) Write(p []byte) (int, error) {
	if err := dw.arm(); err != nil {
		return 0, err
	}
	return dw.w.Write(p)
}

// invalidDocument says why doc, which the validator rejected, cannot be
// written.
func invalidDocument(doc []byte) error {
	var v json.RawMessage
	if err := json.Unmarshal(doc, &v); err != nil {
		return err // a *json.SyntaxError
	}
	return errInvalidUTF8
}

// maxDepth is encoding/json's limit on nesting, which the writers apply
// too so that what they write, Go can read back.
const maxDepth = 10000

// validator checks documents in one pass: JSON (RFC 8259) in UTF-8, nested
// at most maxDepth deep. It accepts exactly what json.Valid and utf8.Valid
// both accept, at a fraction of the cost. Its stack is reused from one
// document to the next.
type validator struct{ stack []byte }

// valid reports whether doc is valid, and whether it has line breaks
// (necessarily whitespace between tokens).
func (v *validator) valid(doc []byte) (ok, multiline bool) {
	st := v.stack[:0]
	defer func() { v.stack = st[:0] }()
	i, lb := skipSpace(doc, 0)
	multiline = lb
	for {
		// A value starts at i.
		if i >= len(doc) {
			return false, multiline
		}
		switch c := doc[i]; c {
		case '{', '[':
			if len(st) >= maxDepth {
				return false, multiline
			}
			i, lb = skipSpace(doc, i+1)
			multiline = multiline || lb
			if i < len(doc) && doc[i] == c+2 { // '}' is '{'+2, ']' is '['+2
				i++
				break
			}
			st = append(st, c)
			if c == '[' {
				continue
			}
			if i, ok = objectKey(doc, i, &multiline); !ok {
				return false, multiline
			}
			continue
		case '"':
			if i, ok = scanString(doc, i); !ok {
				return false, multiline
			}
		case 't':
			if i, ok = scanLiteral(doc, i, "true"); !ok {
				return false, multiline
			}
		case 'f':
			if i, ok = scanLiteral(doc, i, "false"); !ok {
				return false, multiline
			}
		case 'n':
			if i, ok = scanLiteral(doc, i, "null"); !ok {
				return false, multiline
			}
		default:
			if i, ok = scanNumber(doc, i); !ok {
				return false, multiline
			}
		}
		// A value ended before i: close containers until one goes on.
		for {
			i, lb = skipSpace(doc, i)
			multiline = multiline || lb
			if len(st) == 0 {
				return i == len(doc), multiline
			}
			if i >= len(doc) {
				return false, multiline
			}
			top := st[len(st)-1]
			c := doc[i]
			if c == top+2 {
				st = st[:len(st)-1]
				i++
				continue
			}
			if c != ',' {
				return false, multiline
			}
			i, lb = skipSpace(doc, i+1)
			multiline = multiline || lb
			if top == '{' {
				if i, ok = objectKey(doc, i, &multiline); !ok {
					return false, multiline
				}
			}
			break
		}
	}
}

// skipSpace returns the index of the first byte from i on that is not
// JSON whitespace, and whether it skipped a line break.
func skipSpace(doc []byte, i int) (int, bool) {
	lb := false
	for ; i < len(doc); i++ {
		switch doc[i] {
		case ' ', '\t':
		case '\n', '\r':
			lb = true
		default:
			return i, lb
		}
	}
	return i, lb
}

// objectKey scans a member's key and colon from i, and the whitespace
// after them.
func objectKey(doc []byte, i int, multiline *bool) (int, bool) {
	if i >= len(doc) || doc[i] != '"' {
		return i, false
	}
	i, ok := scanString(doc, i)
	if !ok {
		return i, false
	}
	i, lb := skipSpace(doc, i)
	*multiline = *multiline || lb
	if i >= len(doc) || doc[i] != ':' {
		return i, false
	}
	i, lb = skipSpace(doc, i+1)
	*multiline = *multiline || lb
	return i, true
}

// scanString scans the string that starts at i, returning the index after
// its closing quote.
func scanString(doc []byte, i int) (int, bool) {
	for i++; i < len(doc); {
		for i < len(doc) && plainStringByte[doc[i]] {
			i++
		}
		if i == len(doc) {
			break
		}
		c := doc[i]
		switch {
		case c == '"':
			return i + 1, true
		case c == '\\':
			if i+1 >= len(doc) {
				return i, false
			}
			switch doc[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(doc) || !isHex(doc[i+2]) || !isHex(doc[i+3]) || !isHex(doc[i+4]) || !isHex(doc[i+5]) {
					return i, false
				}
				i += 6
			default:
				return i, false
			}
		case c < utf8.RuneSelf: // a control character
			return i, false
		default:
			r, size := utf8.DecodeRune(doc[i:])
			if r == utf8.RuneError && size == 1 {
				return i, false
			}
			i += size
		}
	}
	return i, false
}

// plainStringByte tells the bytes that stand for themselves in a JSON
// string: ASCII except control characters, quote and backslash.
var plainStringByte = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// scanNumber scans the number that starts at i.
func scanNumber(doc []byte, i int) (int, bool) {
	if i < len(doc) && doc[i] == '-' {
		i++
	}
	switch {
	case i >= len(doc):
		return i, false
	case doc[i] == '0':
		i++
	case '1' <= doc[i] && doc[i] <= '9':
		i = skipDigits(doc, i+1)
	default:
		return i, false
	}
	if i < len(doc) && doc[i] == '.' {
		j := skipDigits(doc, i+1)
		if j == i+1 {
			return j, false
		}
		i = j
	}
	if i < len(doc) && (doc[i] == 'e' || doc[i] == 'E') {
		i++
		if i < len(doc) && (doc[i] == '+' || doc[i] == '-') {
			i++
		}
		j := skipDigits(doc, i)
		if j == i {
			return j, false
		}
		i = j
	}
	return i, true
}

func skipDigits(doc []byte, i int) int {
	for i < len(doc) && '0' <= doc[i] && doc[i] <= '9' {
		i++
	}
	return i
}

// scanLiteral scans lit, which starts at i.
func scanLiteral(doc []byte, i int, lit string) (int, bool) {
	if len(doc)-i < len(lit) || string(doc[i:i+len(lit)]) != lit {
		return i, false
	}
	return i + len(lit), true
}
