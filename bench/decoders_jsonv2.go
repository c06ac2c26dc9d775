//go:build goexperiment.jsonv2

package bench

import jsonv2 "encoding/json/v2"

func init() {
	Decoders = append(Decoders, Decoder{Name: JSONv2, Unmarshal: func(data []byte, v any) error {
		return jsonv2.Unmarshal(data, v)
	}})
}
