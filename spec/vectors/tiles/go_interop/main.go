// Interop check: Go's golang.org/x/mod/sumdb/tlog reads an EMShield log through its C2SP
// tlog-tiles API. Run by tests/audit/test_tiles_go_interop.py where Go and golang.org/x/mod are
// installed (Debian: golang-go golang-golang-x-mod-dev), in GOPATH mode:
//   GO111MODULE=off GOPATH=$TMP:/usr/share/gocode go run main.go URL SIZE ROOT_BASE64 OLD_SIZE OLD_ROOT_BASE64
//
// sumdb tiles have height 8 like C2SP's, and their path is tile/8/<L>/<N>[.p/<W>]: the C2SP path
// is the same without the height element. TileHashReader authenticates every tile it reads
// against the tree hash, so any wrong byte in a tile fails here.
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/tlog"
)

func must(err error) {
	if err != nil {
		fmt.Println("FAIL:", err)
		os.Exit(1)
	}
}

func get(url string) []byte {
	resp, err := http.Get(url)
	must(err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	must(err)
	if resp.StatusCode != 200 {
		must(fmt.Errorf("GET %s: %d %s", url, resp.StatusCode, data))
	}
	return data
}

// c2spPath turns sumdb's tile/8/L/N[.p/W] into C2SP's tile/L/N[.p/W].
func c2spPath(t tlog.Tile) string {
	p := t.Path()
	if !strings.HasPrefix(p, "tile/8/") {
		must(fmt.Errorf("unexpected sumdb tile path %s", p))
	}
	return "tile/" + strings.TrimPrefix(p, "tile/8/")
}

type reader struct{ url string }

func (r reader) Height() int { return 8 }

func (r reader) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		out[i] = get(r.url + "/" + c2spPath(t))
	}
	return out, nil
}

func (r reader) SaveTiles(tiles []tlog.Tile, data [][]byte) {}

func hash(b64 string) tlog.Hash {
	raw, err := base64.StdEncoding.DecodeString(b64)
	must(err)
	var h tlog.Hash
	copy(h[:], raw)
	return h
}

func main() {
	url := os.Args[1]
	size, _ := strconv.ParseInt(os.Args[2], 10, 64)
	root := hash(os.Args[3])
	oldSize, _ := strconv.ParseInt(os.Args[4], 10, 64)
	oldRoot := hash(os.Args[5])

	hr := tlog.TileHashReader(tlog.Tree{N: size, Hash: root}, reader{url})
	th, err := tlog.TreeHash(size, hr)
	must(err)
	if th != root {
		must(fmt.Errorf("tree hash from tiles %v != checkpoint root %v", th, root))
	}
	fmt.Println("tree hash from tiles: ok")

	// Every entry of the first and the last bundle: Go's record proof against the root.
	for _, n := range []int64{0, (size - 1) / 256} {
		w := size - n*256
		if w > 256 {
			w = 256
		}
		t := tlog.Tile{H: 8, L: 0, N: n, W: int(w)}
		path := strings.Replace(c2spPath(t), "tile/0/", "tile/entries/", 1)
		bundle := bytes.NewReader(get(url + "/" + path))
		for i := int64(0); i < w; i++ {
			var l uint16
			must(binary.Read(bundle, binary.BigEndian, &l))
			data := make([]byte, l)
			_, err := io.ReadFull(bundle, data)
			must(err)
			idx := n*256 + i
			p, err := tlog.ProveRecord(size, idx, hr)
			must(err)
			must(tlog.CheckRecord(p, size, root, idx, tlog.RecordHash(data)))
		}
		if bundle.Len() != 0 {
			must(fmt.Errorf("%s has %d trailing bytes", path, bundle.Len()))
		}
	}
	fmt.Println("entry bundles and record proofs: ok")

	p, err := tlog.ProveTree(size, oldSize, hr)
	must(err)
	must(tlog.CheckTree(p, size, root, oldSize, oldRoot))
	fmt.Println("tree proof from the old checkpoint: ok")
}
