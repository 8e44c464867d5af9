// Command kustomize renders a kustomization directory as `kubectl kustomize DIR` does, with the
// kustomize API (krusty) pinned in go.mod: the deploy tests render deploy/k8s with it so that every
// machine, with or without kubectl, renders the same way.
//
//	kustomize DIR         YAML documents on stdout, as kubectl prints them
//	kustomize -json DIR   a JSON array of the objects (what the tests read: no YAML parser needed)
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

func fail(err error) {
	fmt.Fprintln(os.Stderr, "kustomize:", err)
	os.Exit(1)
}

func main() {
	args := os.Args[1:]
	asJSON := len(args) == 2 && args[0] == "-json"
	if asJSON {
		args = args[1:]
	}
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: kustomize [-json] DIR")
		os.Exit(2)
	}
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resources, err := k.Run(filesys.MakeFsOnDisk(), args[0])
	if err != nil {
		fail(err)
	}
	var out []byte
	if asJSON {
		objects := []json.RawMessage{}
		for _, r := range resources.Resources() {
			b, err := r.MarshalJSON()
			if err != nil {
				fail(err)
			}
			objects = append(objects, b)
		}
		out, err = json.MarshalIndent(objects, "", " ")
		out = append(out, '\n')
	} else {
		out, err = resources.AsYaml()
	}
	if err != nil {
		fail(err)
	}
	if _, err := os.Stdout.Write(out); err != nil {
		os.Exit(1)
	}
}
