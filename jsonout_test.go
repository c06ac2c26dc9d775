package jsonstream

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// jsonParseNDJSON parses out line by line, requiring each line to be one
// JSON value, and returns the values as written.
func jsonParseNDJSON(t *testing.T, out []byte) []string {
	t.Helper()
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		require.True(t, json.Valid(sc.Bytes()), "line %d is not JSON: %q", len(lines)+1, sc.Text())
		lines = append(lines, sc.Text())
	}
	require.NoError(t, sc.Err())
	if len(out) > 0 {
		require.Equal(t, byte('\n'), out[len(out)-1], "the last line is cut")
	}
	return lines
}

// jsonParseArray parses out as one JSON array and returns its elements as
// written.
func jsonParseArray(t *testing.T, out []byte) []string {
	t.Helper()
	var elems []json.RawMessage
	require.NoError(t, json.Unmarshal(out, &elems), "output: %q", out)
	got := make([]string, len(elems))
	for i, e := range elems {
		got[i] = string(e)
	}
	return got
}

func jsonTestDocs() []driver.Value {
	return []driver.Value{
		[]byte(`{"id":1,"name":"a"}`),
		`{ "id" : 2 }`, // json keeps the text as it was given
		[]byte(`[1,"two",{"three":3}]`),
		[]byte(`"just a string"`),
		[]byte(`42`),
	}
}

func TestWriteNDJSON(t *testing.T) {
	rows := jsonQuery(t, jsonDocRows("JSON", jsonTestDocs()...))
	var out bytes.Buffer
	n, err := WriteNDJSON(context.Background(), &out, rows)
	require.NoError(t, err)
	assert.Equal(t, int64(5), n)
	assert.Equal(t, []string{`{"id":1,"name":"a"}`, `{ "id" : 2 }`, `[1,"two",{"three":3}]`, `"just a string"`, `42`},
		jsonParseNDJSON(t, out.Bytes()))
}

func TestWriteNDJSONCompactsDocumentsThatSpanLines(t *testing.T) {
	rows := jsonQuery(t, jsonDocRows("JSON",
		"{\n  \"id\": 1,\n  \"text\": \"two\\nlines\"\n}",
		"[1,\r\n2]",
		[]byte(`{"id":3}`),
	))
	var out bytes.Buffer
	n, err := WriteNDJSON(context.Background(), &out, rows)
	require.NoError(t, err)
	assert.Equal(t, int64(3), n)
	assert.Equal(t, "{\"id\":1,\"text\":\"two\\nlines\"}\n[1,2]\n{\"id\":3}\n", out.String())
}

func TestWriteJSONArray(t *testing.T) {
	rows := jsonQuery(t, jsonDocRows("JSON", jsonTestDocs()...))
	var out bytes.Buffer
	n, err := WriteJSONArray(context.Background(), &out, rows)
	require.NoError(t, err)
	assert.Equal(t, int64(5), n)
	assert.Equal(t, "[\n"+`{"id":1,"name":"a"}`+",\n"+`{ "id" : 2 }`+",\n"+`[1,"two",{"three":3}]`+",\n"+
		`"just a string"`+",\n"+`42`+"\n]\n", out.String())
	assert.Len(t, jsonParseArray(t, out.Bytes()), 5)
}

func TestWriteJSONArrayKeepsLineBreaks(t *testing.T) {
	doc := "{\n  \"id\": 1\n}"
	rows := jsonQuery(t, jsonDocRows("JSON", doc))
	var out bytes.Buffer
	_, err := WriteJSONArray(context.Background(), &out, rows)
	require.NoError(t, err)
	assert.Equal(t, []string{doc}, jsonParseArray(t, out.Bytes()))
}

func TestWriteEmptyResult(t *testing.T) {
	t.Run("NDJSON", func(t *testing.T) {
		var out bytes.Buffer
		n, err := WriteNDJSON(context.Background(), &out, jsonQuery(t, jsonDocRows("JSONB")))
		require.NoError(t, err)
		assert.Zero(t, n)
		assert.Empty(t, out.String())
	})
	t.Run("array", func(t *testing.T) {
		var out bytes.Buffer
		n, err := WriteJSONArray(context.Background(), &out, jsonQuery(t, jsonDocRows("JSONB")))
		require.NoError(t, err)
		assert.Zero(t, n)
		assert.Equal(t, "[]\n", out.String())
		assert.Empty(t, jsonParseArray(t, out.Bytes()))
	})
	t.Run("only NULLs skipped", func(t *testing.T) {
		var out bytes.Buffer
		n, err := WriteJSONArray(context.Background(), &out, jsonQuery(t, jsonDocRows("JSONB", nil, nil)), WithSkipNull())
		require.NoError(t, err)
		assert.Zero(t, n)
		assert.Equal(t, "[]\n", out.String())
	})
}

func TestWriteErrorMidStream(t *testing.T) {
	boom := errors.New("connection reset")
	cases := []struct {
		name  string
		rows  func() *sqlmock.Rows
		check func(t *testing.T, err error)
	}{{
		name: "malformed document",
		rows: func() *sqlmock.Rows {
			return jsonDocRows("TEXT", `{"id":1}`, `{"id":2}`, `{"id":3`, `{"id":4}`)
		},
		check: func(t *testing.T, err error) {
			var de *DocumentError
			require.ErrorAs(t, err, &de)
			assert.Equal(t, int64(3), de.Row)
			assert.Equal(t, `{"id":3`, de.Excerpt)
		},
	}, {
		name: "NULL document",
		rows: func() *sqlmock.Rows {
			return jsonDocRows("JSONB", []byte(`{"id":1}`), []byte(`{"id":2}`), nil)
		},
		check: func(t *testing.T, err error) {
			require.ErrorIs(t, err, ErrNullDocument)
			assert.Contains(t, err.Error(), "row 3")
		},
	}, {
		name: "invalid UTF-8",
		rows: func() *sqlmock.Rows {
			return jsonDocRows("TEXT", `{"id":1}`, `{"id":2}`, "{\"id\":\"\xff\"}")
		},
		check: func(t *testing.T, err error) {
			var de *DocumentError
			require.ErrorAs(t, err, &de)
			assert.Equal(t, int64(3), de.Row)
			assert.Equal(t, "{\"id\":\"\uFFFD\"}", de.Excerpt)
		},
	}, {
		name: "driver error",
		rows: func() *sqlmock.Rows {
			return jsonDocRows("JSONB", []byte(`{"id":1}`), []byte(`{"id":2}`), []byte(`{"id":3}`)).RowError(2, boom)
		},
		check: func(t *testing.T, err error) { assert.ErrorIs(t, err, boom) },
	}}
	for _, tc := range cases {
		t.Run(tc.name+"/NDJSON", func(t *testing.T) {
			var out bytes.Buffer
			n, err := WriteNDJSON(context.Background(), &out, jsonQuery(t, tc.rows()))
			tc.check(t, err)
			assert.Equal(t, int64(2), n)
			// The caller gets the error and whole lines only: the documents
			// before the bad row, nothing after.
			assert.Equal(t, []string{`{"id":1}`, `{"id":2}`}, jsonParseNDJSON(t, out.Bytes()))
		})
		t.Run(tc.name+"/array", func(t *testing.T) {
			var out bytes.Buffer
			n, err := WriteJSONArray(context.Background(), &out, jsonQuery(t, tc.rows()))
			tc.check(t, err)
			assert.Equal(t, int64(2), n)
			// No closing bracket: the output is visibly cut short.
			assert.Equal(t, "[\n{\"id\":1},\n{\"id\":2}", out.String())
			assert.False(t, json.Valid(out.Bytes()))
		})
	}
}

func TestWriteErrorBeforeFirstDocumentWritesNothing(t *testing.T) {
	for name, write := range map[string]func(*testing.T, *bytes.Buffer, *sqlmock.Rows, ...JSONOption) error{
		"NDJSON": func(t *testing.T, out *bytes.Buffer, rows *sqlmock.Rows, opts ...JSONOption) error {
			_, err := WriteNDJSON(context.Background(), out, jsonQuery(t, rows), opts...)
			return err
		},
		"array": func(t *testing.T, out *bytes.Buffer, rows *sqlmock.Rows, opts ...JSONOption) error {
			_, err := WriteJSONArray(context.Background(), out, jsonQuery(t, rows), opts...)
			return err
		},
	} {
		t.Run(name+"/shape", func(t *testing.T) {
			var out bytes.Buffer
			rows := sqlmock.NewRowsWithColumnDefinition(sqlmock.NewColumn("n").OfType("INT4", 0)).AddRow(1)
			var ce *ColumnError
			require.ErrorAs(t, write(t, &out, rows), &ce)
			assert.Equal(t, "INT4", ce.DatabaseType)
			assert.Zero(t, out.Len())
		})
		t.Run(name+"/first row", func(t *testing.T) {
			var out bytes.Buffer
			var de *DocumentError
			require.ErrorAs(t, write(t, &out, jsonDocRows("TEXT", "nope", `{}`)), &de)
			assert.Equal(t, int64(1), de.Row)
			assert.Zero(t, out.Len())
		})
		t.Run(name+"/bad option", func(t *testing.T) {
			var out bytes.Buffer
			require.ErrorIs(t, write(t, &out, jsonDocRows("JSONB", []byte(`{}`)), WithFlushEvery(0)), ErrInvalidOption)
			assert.Zero(t, out.Len())
		})
	}
}

func TestWriteOptions(t *testing.T) {
	rows := jsonQuery(t, sqlmock.NewRowsWithColumnDefinition(
		sqlmock.NewColumn("id").OfType("INT8", 0),
		sqlmock.NewColumn("doc").OfType("JSONB", nil),
	).AddRow(1, []byte(`{"id":1}`)).AddRow(2, nil).AddRow(3, []byte(`{"id":3}`)))
	var out bytes.Buffer
	n, err := WriteNDJSON(context.Background(), &out, rows, WithColumn("doc"), WithSkipNull(),
		WithUnmarshal(func([]byte, any) error { return errors.New("not used by the writers") }))
	require.NoError(t, err)
	assert.Equal(t, int64(2), n)
	assert.Equal(t, "{\"id\":1}\n{\"id\":3}\n", out.String())
}

func TestWriteLargeDocument(t *testing.T) {
	// Larger than the write buffer: it goes to w whole, in place.
	big := `{"pad":"` + strings.Repeat("x", 3*writeBufferSize) + `"}`
	rows := jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`), []byte(big), []byte(`{"id":3}`)))
	var out bytes.Buffer
	n, err := WriteJSONArray(context.Background(), &out, rows)
	require.NoError(t, err)
	assert.Equal(t, int64(3), n)
	assert.Equal(t, []string{`{"id":1}`, big, `{"id":3}`}, jsonParseArray(t, out.Bytes()))
}

// jsonFlushRecorder records what it had received at each Flush.
type jsonFlushRecorder struct {
	bytes.Buffer
	flushes []string
	onFlush func()
}

func (r *jsonFlushRecorder) Flush() {
	r.flushes = append(r.flushes, r.String())
	if r.onFlush != nil {
		r.onFlush()
	}
}

func TestWriteFlushesEveryNDocuments(t *testing.T) {
	docs := make([]driver.Value, 5)
	for i := range docs {
		docs[i] = []byte(`{"id":` + string(rune('1'+i)) + `}`)
	}
	rec := &jsonFlushRecorder{}
	n, err := WriteNDJSON(context.Background(), rec, jsonQuery(t, jsonDocRows("JSONB", docs...)), WithFlushEvery(2))
	require.NoError(t, err)
	assert.Equal(t, int64(5), n)
	// After documents 2 and 4, then at the end; w always holds whole lines.
	assert.Equal(t, []string{
		"{\"id\":1}\n{\"id\":2}\n",
		"{\"id\":1}\n{\"id\":2}\n{\"id\":3}\n{\"id\":4}\n",
		"{\"id\":1}\n{\"id\":2}\n{\"id\":3}\n{\"id\":4}\n{\"id\":5}\n",
	}, rec.flushes)
}

func TestWriteFlushesResponseWriter(t *testing.T) {
	w := httptest.NewRecorder()
	n, err := WriteJSONArray(context.Background(), w, jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`))))
	require.NoError(t, err)
	assert.Equal(t, int64(1), n)
	assert.True(t, w.Flushed)
	assert.Equal(t, []string{`{"id":1}`}, jsonParseArray(t, w.Body.Bytes()))
}

// jsonErrFlusher is a writer whose Flush fails.
type jsonErrFlusher struct {
	bytes.Buffer
	err error
}

func (f *jsonErrFlusher) Flush() error { return f.err }

func TestWriteReportsFlushError(t *testing.T) {
	w := &jsonErrFlusher{err: errors.New("flush failed")}
	_, err := WriteNDJSON(context.Background(), w, jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`))))
	assert.ErrorIs(t, err, w.err)
}

// jsonFailingWriter fails every Write after the first ok bytes.
type jsonFailingWriter struct {
	ok  int
	err error
}

func (w *jsonFailingWriter) Write(p []byte) (int, error) {
	if len(p) <= w.ok {
		w.ok -= len(p)
		return len(p), nil
	}
	n := w.ok
	w.ok = 0
	return n, w.err
}

func TestWriteReportsWriterError(t *testing.T) {
	big := []byte(`{"pad":"` + strings.Repeat("x", writeBufferSize) + `"}`)
	for name, write := range map[string]func(context.Context, *jsonFailingWriter, *sql.Rows) (int64, error){
		"NDJSON": func(ctx context.Context, w *jsonFailingWriter, rows *sql.Rows) (int64, error) {
			return WriteNDJSON(ctx, w, rows)
		},
		"array": func(ctx context.Context, w *jsonFailingWriter, rows *sql.Rows) (int64, error) {
			return WriteJSONArray(ctx, w, rows)
		},
	} {
		t.Run(name, func(t *testing.T) {
			w := &jsonFailingWriter{ok: 10, err: errors.New("client went away")}
			rows := jsonQuery(t, jsonDocRows("JSONB", big, big, big))
			_, err := write(context.Background(), w, rows)
			assert.ErrorIs(t, err, w.err)
		})
	}
}

func TestWriteHonoursContext(t *testing.T) {
	t.Run("done before", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		var out bytes.Buffer
		n, err := WriteNDJSON(ctx, &out, jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`))))
		assert.ErrorIs(t, err, context.Canceled)
		assert.Zero(t, n)
		assert.Zero(t, out.Len())
	})
	t.Run("done between rows", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		rec := &jsonFlushRecorder{onFlush: cancel}
		rows := jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`), []byte(`{"id":2}`), []byte(`{"id":3}`)))
		n, err := WriteJSONArray(ctx, rec, rows, WithFlushEvery(1))
		assert.ErrorIs(t, err, context.Canceled)
		assert.Equal(t, int64(1), n)
		assert.Equal(t, "[\n{\"id\":1}", rec.String())
	})
}

func TestWriteNilRows(t *testing.T) {
	var out bytes.Buffer
	_, err := WriteNDJSON(context.Background(), &out, nil)
	assert.EqualError(t, err, "jsonstream: nil *sql.Rows")
	_, err = WriteJSONArray(context.Background(), &out, nil)
	assert.EqualError(t, err, "jsonstream: nil *sql.Rows")
}

func TestValidatorAgreesWithEncodingJSON(t *testing.T) {
	docs := []string{
		`{}`, `[]`, `""`, `0`, `-0`, `1.5e+10`, `-1.5E-10`, `true`, `false`, `null`,
		` {"a" : [1, 2.0, -3e2, "x", true, false, null, {}, []] } `,
		`{"a":{"b":{"c":[[[]]]}}}`, `"\u00e9\ud83d\ude00\"\\\/\b\f\n\r\t"`, `"é😀"`,
		"{\n\t\"a\": 1\r\n}",
		``, ` `, `{`, `}`, `[`, `]`, `{]`, `[}`, `{"a"}`, `{"a":}`, `{"a":1,}`, `[1,]`, `[,1]`, `{,}`,
		`{1:2}`, `{"a" 1}`, `01`, `-`, `1.`, `.5`, `1e`, `1e+`, `+1`, `0x10`, `NaN`, `Infinity`,
		`tru`, `truex`, `nul`, `"abc`, `"\x"`, `"\u12"`, `"\u12G4"`, "\"a\nb\"", "\"a\tb\"",
		`{}{}`, `[] []`, `1 2`, "\xef\xbb\xbf{}", "\"\xff\"", "\"\xed\xa0\x80\"", "\"\xc3\"",
		"[\"\xe2\x82\xac\"]", "\x00", "[1]\x00",
		strings.Repeat("[", maxDepth) + strings.Repeat("]", maxDepth),
		strings.Repeat("[", maxDepth+1) + strings.Repeat("]", maxDepth+1),
		strings.Repeat(`{"a":`, maxDepth) + "1" + strings.Repeat("}", maxDepth),
		strings.Repeat(`{"a":`, maxDepth+1) + "1" + strings.Repeat("}", maxDepth+1),
		strings.Repeat("[", maxDepth) + "[]" + strings.Repeat("]", maxDepth),
	}
	var check validator
	for _, doc := range docs {
		ok, multiline := check.valid([]byte(doc))
		want := json.Valid([]byte(doc)) && utf8.ValidString(doc)
		name := doc
		if len(name) > 40 {
			name = name[:40] + "..."
		}
		assert.Equal(t, want, ok, "%q", name)
		if ok {
			assert.Equal(t, strings.ContainsAny(doc, "\r\n"), multiline, "%q", name)
		}
	}
}

func BenchmarkJSONValidator(b *testing.B) {
	doc := []byte(`{"id": 123456, "name": "user 123456", "tags": ["alpha", "beta", "gamma"], ` +
		`"email": "user123456@example.com", "active": true, "note": "` + strings.Repeat("x", 150) + `"}`)
	b.Run("validator", func(b *testing.B) {
		var check validator
		b.SetBytes(int64(len(doc)))
		for range b.N {
			if ok, _ := check.valid(doc); !ok {
				b.Fatal("invalid")
			}
		}
	})
	b.Run("json.Valid+utf8.Valid", func(b *testing.B) {
		b.SetBytes(int64(len(doc)))
		for range b.N {
			if !json.Valid(doc) || !utf8.Valid(doc) {
				b.Fatal("invalid")
			}
		}
	})
}

// TestWriterErrorIsClientGone: an error of w's own, from a Write or a
// Flush, wraps ErrClientGone and keeps w's error reachable; a failure of
// the query, of a document or of the context does not wrap ErrClientGone.
func TestWriterErrorIsClientGone(t *testing.T) {
	big := []byte(`{"pad":"` + strings.Repeat("x", writeBufferSize) + `"}`)
	t.Run("write", func(t *testing.T) {
		w := &jsonFailingWriter{ok: 10, err: &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", syscall.EPIPE)}}
		_, err := WriteNDJSON(context.Background(), w, jsonQuery(t, jsonDocRows("JSONB", big, big)))
		require.ErrorIs(t, err, ErrClientGone)
		assert.ErrorIs(t, err, syscall.EPIPE)
		var opErr *net.OpError
		assert.ErrorAs(t, err, &opErr)
		assert.Contains(t, err.Error(), "writing to the client failed")
	})
	t.Run("end of the array", func(t *testing.T) {
		// Everything fits in the buffer: w fails at the final write.
		w := &jsonFailingWriter{ok: 0, err: syscall.ECONNRESET}
		_, err := WriteJSONArray(context.Background(), w, jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`))))
		require.ErrorIs(t, err, ErrClientGone)
		assert.ErrorIs(t, err, syscall.ECONNRESET)
	})
	t.Run("flush", func(t *testing.T) {
		w := &jsonErrFlusher{err: errors.New("flush failed")}
		_, err := WriteNDJSON(context.Background(), w, jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`), []byte(`{"id":2}`))), WithFlushEvery(1))
		require.ErrorIs(t, err, ErrClientGone)
		assert.ErrorIs(t, err, w.err)
	})
	t.Run("not the writer's", func(t *testing.T) {
		var out bytes.Buffer
		_, err := WriteNDJSON(context.Background(), &out, jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`), nil)))
		require.ErrorIs(t, err, ErrNullDocument)
		assert.NotErrorIs(t, err, ErrClientGone)

		rows := sqlmock.NewRowsWithColumnDefinition(sqlmock.NewColumn("doc").OfType("JSONB", nil)).
			AddRow([]byte(`{"id":1}`)).RowError(0, errors.New("server went away"))
		_, err = WriteNDJSON(context.Background(), &out, jsonQuery(t, rows))
		require.Error(t, err)
		assert.NotErrorIs(t, err, ErrClientGone)

		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err = WriteNDJSON(ctx, &out, jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`))))
		require.ErrorIs(t, err, context.Canceled)
		assert.NotErrorIs(t, err, ErrClientGone)
	})
}

// serveDocuments runs write in an HTTP handler over real HTTP/1.1 and
// returns the body the client read, its read error and the status
// trailer.
func serveDocuments(t *testing.T, write func(http.ResponseWriter) error) (body string, trailer http.Header, readErr error) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if err := write(w); err != nil {
			t.Logf("handler: %v", err)
		}
	}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, readErr := io.ReadAll(resp.Body)
	return string(b), resp.Trailer, readErr
}

// panicFlusher is an http.ResponseWriter whose second flush panics.
type panicFlusher struct {
	http.ResponseWriter
	flushes int
}

func (p *panicFlusher) FlushError() error {
	if p.flushes++; p.flushes > 1 {
		panic("flush")
	}
	return http.NewResponseController(p.ResponseWriter).Flush()
}

// TestWriterStatusTrailer: on an http.ResponseWriter the writers end the
// response with the Jsonstream-Status trailer: complete when every
// document was written, failed when the writing stopped after the body
// began, and none when it stopped before (the handler may still send an
// error status then).
func TestWriterStatusTrailer(t *testing.T) {
	for name, write := range map[string]func(context.Context, io.Writer, *sqlmock.Rows, ...JSONOption) (int64, error){
		"NDJSON": func(ctx context.Context, w io.Writer, rows *sqlmock.Rows, opts ...JSONOption) (int64, error) {
			return WriteNDJSON(ctx, w, jsonQuery(t, rows), opts...)
		},
		"array": func(ctx context.Context, w io.Writer, rows *sqlmock.Rows, opts ...JSONOption) (int64, error) {
			return WriteJSONArray(ctx, w, jsonQuery(t, rows), opts...)
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Run("complete", func(t *testing.T) {
				body, trailer, err := serveDocuments(t, func(w http.ResponseWriter) error {
					_, err := write(context.Background(), w, jsonDocRows("JSONB", []byte(`{"id":1}`), []byte(`{"id":2}`)))
					return err
				})
				require.NoError(t, err)
				assert.Contains(t, body, `{"id":2}`)
				assert.Equal(t, StatusComplete, trailer.Get(TrailerStatus))
			})
			t.Run("empty", func(t *testing.T) {
				_, trailer, err := serveDocuments(t, func(w http.ResponseWriter) error {
					_, err := write(context.Background(), w, jsonDocRows("JSONB"))
					return err
				})
				require.NoError(t, err)
				assert.Equal(t, StatusComplete, trailer.Get(TrailerStatus))
			})
			t.Run("failed mid-stream", func(t *testing.T) {
				body, trailer, err := serveDocuments(t, func(w http.ResponseWriter) error {
					_, err := write(context.Background(), w, jsonDocRows("JSONB", []byte(`{"id":1}`), nil), WithFlushEvery(1))
					return err
				})
				require.NoError(t, err)
				assert.Contains(t, body, `{"id":1}`)
				assert.Equal(t, StatusFailed, trailer.Get(TrailerStatus))
				assert.NotContains(t, trailer.Get(TrailerStatus), "NULL", "the error reached the client")
			})
			t.Run("a panic after the body began", func(t *testing.T) {
				// A recovering handler lets the response end: the trailer
				// must not say complete.
				_, trailer, err := serveDocuments(t, func(w http.ResponseWriter) (err error) {
					defer func() {
						if p := recover(); p != nil {
							err = fmt.Errorf("recovered: %v", p)
						}
					}()
					_, err = write(context.Background(), &panicFlusher{ResponseWriter: w},
						jsonDocRows("JSONB", []byte(`{"id":1}`), []byte(`{"id":2}`)), WithFlushEvery(1))
					return err
				})
				require.NoError(t, err)
				assert.Equal(t, StatusFailed, trailer.Get(TrailerStatus))
			})
			t.Run("failed before the body", func(t *testing.T) {
				var status int
				_, trailer, err := serveDocuments(t, func(w http.ResponseWriter) error {
					_, err := write(context.Background(), w, jsonDocRows("JSONB", nil))
					if err != nil {
						status = http.StatusInternalServerError
						http.Error(w, "no documents", status)
					}
					return err
				})
				require.NoError(t, err)
				assert.Equal(t, http.StatusInternalServerError, status)
				assert.Empty(t, trailer.Get(TrailerStatus), "a trailer on the handler's error response")
			})
		})
	}
}

// TestWriteNilWriter: a nil io.Writer is an error, not a panic, and the
// rows are closed.
func TestWriteNilWriter(t *testing.T) {
	for _, write := range []func(context.Context, io.Writer, *sql.Rows, ...JSONOption) (int64, error){WriteNDJSON, WriteJSONArray} {
		rows := jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`)))
		n, err := write(context.Background(), nil, rows)
		require.ErrorIs(t, err, errNilWriter)
		assert.Zero(t, n)
		assert.False(t, rows.Next(), "the rows were left open")
	}
}

// TestWriteTimeout: WithWriteTimeout sets w's write deadline before each
// write, so a client that stops reading fails the writing with
// ErrClientGone wrapping os.ErrDeadlineExceeded; a writer without a
// deadline is refused before anything is written, as is a bad duration.
func TestWriteTimeout(t *testing.T) {
	t.Run("stalled reader", func(t *testing.T) {
		client, server := net.Pipe() // no buffer: a write waits for the reader
		defer client.Close()
		defer server.Close()
		go func() { // reads the first block, then stops reading
			buf := make([]byte, writeBufferSize)
			_, _ = io.ReadFull(client, buf[:1])
		}()
		big := []byte(`{"pad":"` + strings.Repeat("x", writeBufferSize) + `"}`)
		start := time.Now()
		_, err := WriteNDJSON(context.Background(), server, jsonQuery(t, jsonDocRows("JSONB", big, big, big)), WithWriteTimeout(50*time.Millisecond))
		require.ErrorIs(t, err, ErrClientGone)
		assert.ErrorIs(t, err, os.ErrDeadlineExceeded)
		assert.Less(t, time.Since(start), 5*time.Second)
	})
	t.Run("no deadline", func(t *testing.T) {
		var out bytes.Buffer
		_, err := WriteNDJSON(context.Background(), &out, jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`))), WithWriteTimeout(time.Second))
		require.ErrorIs(t, err, ErrInvalidOption)
		assert.Contains(t, err.Error(), "*bytes.Buffer has no write deadline")
		assert.Zero(t, out.Len())
	})
	t.Run("recorder", func(t *testing.T) {
		rec := httptest.NewRecorder() // its connection has no deadline
		_, err := WriteNDJSON(context.Background(), rec, jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`))), WithWriteTimeout(time.Second))
		require.ErrorIs(t, err, ErrInvalidOption)
		assert.Contains(t, err.Error(), "cannot be set")
		assert.Zero(t, rec.Body.Len())
		assert.Empty(t, rec.Header(), "the header was touched")
	})
	t.Run("over HTTP", func(t *testing.T) {
		body, trailer, err := serveDocuments(t, func(w http.ResponseWriter) error {
			_, err := WriteNDJSON(context.Background(), w, jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`))), WithWriteTimeout(time.Minute))
			return err
		})
		require.NoError(t, err)
		assert.Equal(t, "{\"id\":1}\n", body)
		assert.Equal(t, StatusComplete, trailer.Get(TrailerStatus))
	})
	t.Run("bad duration", func(t *testing.T) {
		for _, d := range []time.Duration{0, -time.Second} {
			var out bytes.Buffer
			_, err := WriteNDJSON(context.Background(), &out, jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`))), WithWriteTimeout(d))
			require.ErrorIs(t, err, ErrInvalidOption, "%v", d)
			assert.Contains(t, err.Error(), "must be positive")
		}
	})
}
