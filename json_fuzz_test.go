package jsonstream

import (
	"bytes"
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"unicode/utf8"
)

// The fuzz driver returns three rows: a valid document, the fuzzed one and
// another valid document, all from one buffer that each Next overwrites,
// as lib/pq's read buffer is; the query's arguments are the fuzzed
// document and whether it comes as text (string) or json ([]byte).
type (
	jsonFuzzConnector struct{}
	jsonFuzzConn      struct{}
	jsonFuzzRows      struct {
		docs   [][]byte
		asText bool
		pos    int
		buf    []byte
	}
)

const (
	jsonFuzzFirst = `{"row":1}`
	jsonFuzzLast  = `{"row":3}`
)

func (jsonFuzzConnector) Connect(context.Context) (driver.Conn, error) { return jsonFuzzConn{}, nil }
func (jsonFuzzConnector) Driver() driver.Driver                        { return nil }

func (jsonFuzzConn) Prepare(string) (driver.Stmt, error) { return nil, errors.New("fuzz: no Prepare") }
func (jsonFuzzConn) Close() error                        { return nil }
func (jsonFuzzConn) Begin() (driver.Tx, error)           { return nil, errors.New("fuzz: no Begin") }

func (jsonFuzzConn) QueryContext(_ context.Context, _ string, args []driver.NamedValue) (driver.Rows, error) {
	doc, _ := args[0].Value.([]byte)
	asText, _ := args[1].Value.(bool)
	return &jsonFuzzRows{docs: [][]byte{[]byte(jsonFuzzFirst), doc, []byte(jsonFuzzLast)}, asText: asText}, nil
}

func (r *jsonFuzzRows) Columns() []string { return []string{"doc"} }
func (r *jsonFuzzRows) Close() error      { return nil }

func (r *jsonFuzzRows) ColumnTypeDatabaseTypeName(int) string {
	if r.asText {
		return "TEXT"
	}
	return "JSON"
}

func (r *jsonFuzzRows) Next(dest []driver.Value) error {
	if r.pos == len(r.docs) {
		return io.EOF
	}
	// Spoil what the last row handed out before reusing the buffer.
	for i := range r.buf {
		r.buf[i] = '#'
	}
	r.buf = append(r.buf[:0], r.docs[r.pos]...)
	r.pos++
	if r.asText {
		dest[0] = string(r.buf)
	} else {
		dest[0] = r.buf
	}
	return nil
}

func FuzzEach(f *testing.F) {
	for _, seed := range []string{
		`{"a":1,"b":[true,false,null],"c":"x"}`,
		`{"a":`,
		`{"a":1}}`,
		`"\xff\xfe"`,
		"{\"k\":\"\xe2\x82\"}",
		`1e999999`,
		`123456789012345678901234567890123456789012345678901234567890`,
		strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
		strings.Repeat("[", 100) + "1" + strings.Repeat("]", 99),
		``,
		`   `,
		"{\n\"multi\":\n\"line\"\n}",
		`{"s":"` + strings.Repeat("é", 100) + `"`,
		"\xef\xbb\xbf{}",
	} {
		f.Add([]byte(seed), false)
		f.Add([]byte(seed), true)
	}
	c, err := NewConnector(jsonFuzzConnector{})
	if err != nil {
		f.Fatal(err)
	}
	db := sql.OpenDB(c)
	f.Cleanup(func() { _ = db.Close() })

	query := func(t *testing.T, doc []byte, asText bool) *sql.Rows {
		rows, err := db.Query("fuzz", doc, asText)
		if err != nil {
			t.Fatal(err)
		}
		return rows
	}
	// checkDocumentError requires a *DocumentError for row 2 with a short,
	// valid excerpt of doc.
	checkDocumentError := func(t *testing.T, err error) {
		t.Helper()
		var de *DocumentError
		if !errors.As(err, &de) {
			t.Fatalf("want a *DocumentError, got %T: %v", err, err)
		}
		if de.Row != 2 {
			t.Fatalf("Row = %d, want 2 (%v)", de.Row, err)
		}
		if !utf8.ValidString(de.Excerpt) || len(de.Excerpt) > maxExcerpt {
			t.Fatalf("bad excerpt %q (%d bytes)", de.Excerpt, len(de.Excerpt))
		}
		_ = err.Error()
	}

	f.Fuzz(func(t *testing.T, doc []byte, asText bool) {
		// The writers' validator agrees with encoding/json and
		// unicode/utf8, also when its stack is reused.
		var check validator
		for range 2 {
			ok, multiline := check.valid(doc)
			if want := json.Valid(doc) && utf8.Valid(doc); ok != want {
				t.Fatalf("validator says %v, json.Valid and utf8.Valid say %v", ok, want)
			}
			if ok && multiline != bytes.ContainsAny(doc, "\r\n") {
				t.Fatalf("validator says multiline %v", multiline)
			}
		}

		var want any
		decodable := utf8.Valid(doc) && json.Unmarshal(doc, &want) == nil

		// Each decodes row 2 as json.Unmarshal alone would, or stops there
		// with a *DocumentError: also where json.Unmarshal would put
		// U+FFFD for invalid UTF-8.
		var got []any
		var iterErr error
		for v, err := range Each[any](query(t, doc, asText)) {
			if err != nil {
				iterErr = err
				continue
			}
			got = append(got, v)
		}
		if decodable {
			if iterErr != nil {
				t.Fatalf("Each failed on a document json.Unmarshal takes: %v", iterErr)
			}
			if len(got) != 3 {
				t.Fatalf("got %d values, want 3", len(got))
			}
			wantJSON, _ := json.Marshal(want)
			gotJSON, _ := json.Marshal(got[1])
			if !bytes.Equal(wantJSON, gotJSON) {
				t.Fatalf("decoded %s, want %s", gotJSON, wantJSON)
			}
		} else {
			checkDocumentError(t, iterErr)
			if len(got) != 1 {
				t.Fatalf("got %d values before the error, want 1", len(got))
			}
		}

		// Raw documents come back as they were, whatever they hold.
		var raws []json.RawMessage
		for v, err := range Each[json.RawMessage](query(t, doc, asText)) {
			if err != nil {
				t.Fatal(err)
			}
			raws = append(raws, v)
		}
		if len(raws) != 3 || !bytes.Equal(raws[1], doc) || string(raws[0]) != jsonFuzzFirst || string(raws[2]) != jsonFuzzLast {
			t.Fatalf("raw documents %q", raws)
		}

		// The writers' output is valid JSON whatever the documents: the
		// fuzzed one is written, or the output stops before it.
		valid := json.Valid(doc) && utf8.Valid(doc)
		var out bytes.Buffer
		n, err := WriteJSONArray(context.Background(), &out, query(t, doc, asText))
		if valid {
			if err != nil || n != 3 {
				t.Fatalf("WriteJSONArray: %d, %v", n, err)
			}
			var elems []json.RawMessage
			if err := json.Unmarshal(out.Bytes(), &elems); err != nil || len(elems) != 3 {
				t.Fatalf("array output %q: %v", out.Bytes(), err)
			}
		} else {
			checkDocumentError(t, err)
			if n != 1 || out.String() != "[\n"+jsonFuzzFirst {
				t.Fatalf("WriteJSONArray wrote %d documents: %q", n, out.Bytes())
			}
		}

		out.Reset()
		n, err = WriteNDJSON(context.Background(), &out, query(t, doc, asText))
		if valid {
			if err != nil || n != 3 {
				t.Fatalf("WriteNDJSON: %d, %v", n, err)
			}
			lines := bytes.Split(bytes.TrimSuffix(out.Bytes(), []byte("\n")), []byte("\n"))
			if len(lines) != 3 {
				t.Fatalf("NDJSON output has %d lines: %q", len(lines), out.Bytes())
			}
			for _, line := range lines {
				if !json.Valid(line) {
					t.Fatalf("NDJSON line %q is not JSON", line)
				}
			}
		} else {
			checkDocumentError(t, err)
			if n != 1 || out.String() != jsonFuzzFirst+"\n" {
				t.Fatalf("WriteNDJSON wrote %d documents: %q", n, out.Bytes())
			}
		}
	})
}
