package jsonstream

import (
	"database/sql/driver"
	"io"
	"reflect"
)

// A portal stream's state is a struct of about half a kilobyte, and a
// QueryRow allocates one. When nothing can reach a stream's portal after
// its Close, the connection keeps it for its next portal stream, which
// allocates none: a pool serving small queries back to back reuses the
// same memory, as lib/pq reuses its connection's buffers.
//
// Nothing can reach it when the stream had no Stream, observer, resume
// key, pause or context that can end (each keeps a way back to the stream
// from another goroutine or past its Close), and it did not fail: no
// failure started a release of the portal that might still run. Its end
// was read, or the connection was cut; an end owed to the next query
// (owed.go) keeps its portal. The rows let go of the portal: their inner
// rows become an endedRows that keeps the columns, so that a second
// Close, or Columns and ColumnTypes through sql.Conn.Raw on rows already
// closed, meet the closed stream as before, never the next query's.

// takePortal returns the portal the connection kept (recycle), cleared,
// or a new one: either is the zero portal.
func (c *conn) takePortal() *portal {
	if p := c.spare; p != nil {
		c.spare = nil
		return p
	}
	return new(portal)
}

// recycle gives r's portal to its connection for the next portal stream
// when nothing can reach it any more (see above). Close calls it once it
// ended the stream from Running, or closed one that had come to its end
// (Complete).
func (r *rows) recycle() {
	p := r.portal
	if !p.recyclable || r.pause.Load() != nil || r.stopWatch != nil || r.stopTxWatch != nil {
		return
	}
	// An owed end is read by the next reader, or settled by its Sync
	// timer from another goroutine (owed.go): owed is set, and only
	// set, by the end this goroutine just carried out.
	if p.owed || !p.ended {
		return
	}
	c := r.conn
	r.ended = endedRows{names: p.names, fields: p.fields}
	e := &r.ended
	r.portal, r.inner, r.columnTypes = nil, e, columnTypes{e}
	*p = portal{}
	c.spare = p
}

// endedRows stands in for a recycled portal in the rows it served: a
// closed stream, with the columns it had. Its fields are shared, never
// changed (portal.describe).
type endedRows struct {
	names  []string
	fields []pgField
}

// Columns implements driver.Rows.
func (e *endedRows) Columns() []string { return e.names }

// Close implements driver.Rows.
func (e *endedRows) Close() error { return nil }

// Next implements driver.Rows: the stream was closed.
func (e *endedRows) Next([]driver.Value) error { return io.EOF }

// ColumnTypeScanType implements driver.RowsColumnTypeScanType.
func (e *endedRows) ColumnTypeScanType(i int) reflect.Type { return e.fields[i].scanType() }

// ColumnTypeDatabaseTypeName implements
// driver.RowsColumnTypeDatabaseTypeName.
func (e *endedRows) ColumnTypeDatabaseTypeName(i int) string { return e.fields[i].databaseTypeName() }

// ColumnTypeLength implements driver.RowsColumnTypeLength.
func (e *endedRows) ColumnTypeLength(i int) (int64, bool) { return e.fields[i].length() }

// ColumnTypePrecisionScale implements driver.RowsColumnTypePrecisionScale.
func (e *endedRows) ColumnTypePrecisionScale(i int) (int64, int64, bool) {
	return e.fields[i].precisionScale()
}
