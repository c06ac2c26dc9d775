package jsonstream

import (
	"database/sql/driver"
	"reflect"
)

// columnTypes forwards the optional column type interfaces of database/sql
// to the rows that describe the columns: a stream's inner rows, or a
// cursor's first batch. Each method returns what database/sql reports when
// those rows lack the interface, so ColumnTypes are the same with and
// without jsonstream.
type columnTypes struct{ of driver.Rows }

// ColumnTypeScanType implements driver.RowsColumnTypeScanType.
func (c columnTypes) ColumnTypeScanType(index int) reflect.Type {
	if t, ok := c.of.(driver.RowsColumnTypeScanType); ok {
		return t.ColumnTypeScanType(index)
	}
	return reflect.TypeFor[any]()
}

// ColumnTypeDatabaseTypeName implements driver.RowsColumnTypeDatabaseTypeName.
func (c columnTypes) ColumnTypeDatabaseTypeName(index int) string {
	if t, ok := c.of.(driver.RowsColumnTypeDatabaseTypeName); ok {
		return t.ColumnTypeDatabaseTypeName(index)
	}
	return ""
}

// ColumnTypeLength implements driver.RowsColumnTypeLength.
func (c columnTypes) ColumnTypeLength(index int) (int64, bool) {
	if t, ok := c.of.(driver.RowsColumnTypeLength); ok {
		return t.ColumnTypeLength(index)
	}
	return 0, false
}

// ColumnTypeNullable implements driver.RowsColumnTypeNullable.
func (c columnTypes) ColumnTypeNullable(index int) (nullable, ok bool) {
	if t, ok := c.of.(driver.RowsColumnTypeNullable); ok {
		return t.ColumnTypeNullable(index)
	}
	return false, false
}

// ColumnTypePrecisionScale implements driver.RowsColumnTypePrecisionScale.
func (c columnTypes) ColumnTypePrecisionScale(index int) (precision, scale int64, ok bool) {
	if t, ok := c.of.(driver.RowsColumnTypePrecisionScale); ok {
		return t.ColumnTypePrecisionScale(index)
	}
	return 0, 0, false
}
