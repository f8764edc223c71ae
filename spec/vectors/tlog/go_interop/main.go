// Interop check: Go's golang.org/x/mod/sumdb/note opens EMShield's checkpoint notes and, from
// our signer key, produces the same bytes. Run by tests/tlog/test_tlog_go_interop.py where Go and
// golang.org/x/mod are installed (Debian: golang-go golang-golang-x-mod-dev), in GOPATH mode:
//   GO111MODULE=off GOPATH=$TMP:/usr/share/gocode go run main.go spec/vectors/tlog/notes.json
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"golang.org/x/mod/sumdb/note"
)

type vectors struct {
	Checkpoint struct {
		SignerKey   string `json:"signer_key"`
		VerifierKey string `json:"verifier_key"`
		Body        string `json:"body"`
		Note        string `json:"note"`
	} `json:"checkpoint"`
	Cosignature struct {
		Note string `json:"note"`
	} `json:"cosignature"`
}

func must(err error) {
	if err != nil {
		fmt.Println("FAIL:", err)
		os.Exit(1)
	}
}

func main() {
	raw, err := os.ReadFile(os.Args[1])
	must(err)
	var v vectors
	must(json.Unmarshal(raw, &v))
	verifier, err := note.NewVerifier(v.Checkpoint.VerifierKey)
	must(err)
	n, err := note.Open([]byte(v.Checkpoint.Note), note.VerifierList(verifier))
	must(err)
	if n.Text != v.Checkpoint.Body || len(n.Sigs) != 1 {
		must(fmt.Errorf("opened text %q, %d sigs", n.Text, len(n.Sigs)))
	}
	fmt.Printf("open checkpoint: ok (%s %08x)\n", n.Sigs[0].Name, n.Sigs[0].Hash)
	signer, err := note.NewSigner(v.Checkpoint.SignerKey)
	must(err)
	msg, err := note.Sign(&note.Note{Text: v.Checkpoint.Body}, signer)
	must(err)
	if string(msg) != v.Checkpoint.Note {
		must(fmt.Errorf("Go signed note differs:\n%s", msg))
	}
	fmt.Println("sign with our signer key: identical bytes")
	c, err := note.Open([]byte(v.Cosignature.Note), note.VerifierList(verifier))
	must(err)
	if len(c.Sigs) != 1 || len(c.UnverifiedSigs) != 1 {
		must(fmt.Errorf("cosigned: %d verified, %d unverified", len(c.Sigs), len(c.UnverifiedSigs)))
	}
	fmt.Println("open cosigned checkpoint: log signature verified, witness cosignature left unverified")
}
