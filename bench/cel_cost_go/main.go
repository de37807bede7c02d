// Prints the API server's estimated cost of every x-kubernetes-validations rule of the CRDs read
// from stdin (a multi-document YAML stream), the way kube-apiserver estimates it when the CRD is
// created: the rule's worst-case cost times the most objects it can run on. Exits 1 when a rule
// or a CRD is over the API server's limits.
//
// It uses kube-apiserver's own code, so it builds inside a Kubernetes source tree (vendored);
// bench/crd_cel_cost.py copies it there, builds it and runs it on `tunefleet crd`.
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	apiextensionsinternal "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"k8s.io/apiserver/pkg/cel/environment"
	"k8s.io/apimachinery/pkg/util/version"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

func main() {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(os.Stdin))
	envSet := environment.MustBaseEnvSet(version.MajorMinor(1, 36))
	failed := false
	for {
		doc, err := reader.Read()
		if err == io.EOF {
			break
		}
		check(err)
		if strings.TrimSpace(string(doc)) == "" || strings.TrimSpace(string(doc)) == "---" {
			continue
		}
		var crd apiextensionsv1.CustomResourceDefinition
		check(utilyaml.Unmarshal(doc, &crd))
		var internal apiextensionsinternal.CustomResourceDefinition
		check(apiextensionsv1.Convert_v1_CustomResourceDefinition_To_apiextensions_CustomResourceDefinition(&crd, &internal, nil))
		for _, v := range internal.Spec.Versions {
			var schema *apiextensionsinternal.JSONSchemaProps
			if v.Schema != nil {
				schema = v.Schema.OpenAPIV3Schema
			} else {
				schema = internal.Spec.Validation.OpenAPIV3Schema
			}
			total := uint64(0)
			walk(schema, validation.RootCELContext(schema), "", envSet, &total, &failed)
			fmt.Printf("%s %s total %d (limit %d)\n", crd.Name, v.Name, total, validation.StaticEstimatedCRDCostLimit)
			if total > validation.StaticEstimatedCRDCostLimit {
				failed = true
			}
		}
	}
	if failed {
		os.Exit(1)
	}
}

func walk(s *apiextensionsinternal.JSONSchemaProps, ctx *validation.CELSchemaContext, path string, envSet *environment.EnvSet, total *uint64, failed *bool) {
	if s == nil {
		return
	}
	if len(s.XValidations) > 0 {
		info, err := ctx.TypeInfo()
		check(err)
		results, err := cel.Compile(info.Schema, info.DeclType, celconfig.PerCallLimit, envSet, cel.NewExpressionsEnvLoader())
		check(err)
		for i, r := range results {
			if r.Error != nil {
				fmt.Printf("%s[%d] ERROR %v\n", path, i, r.Error)
				*failed = true
				continue
			}
			card := r.MaxCardinality
			if ctx.MaxCardinality != nil {
				card = *ctx.MaxCardinality
			}
			cost := r.MaxCost * card
			*total += cost + r.MessageExpressionMaxCost
			flag := ""
			if r.MaxCost > validation.StaticEstimatedCostLimit || cost > validation.StaticEstimatedCRDCostLimit || r.MessageExpressionMaxCost > validation.StaticEstimatedCostLimit {
				flag = "  OVER"
				*failed = true
			}
			if r.MessageExpressionError != nil {
				fmt.Printf("%s[%d] MESSAGE ERROR %v\n", path, i, r.MessageExpressionError)
				*failed = true
			}
			fmt.Printf("%-40s rule %d: cost %d x %d = %d; messageExpression %d%s\n", path, i, r.MaxCost, card, cost, r.MessageExpressionMaxCost, flag)
		}
	}
	if s.AdditionalProperties != nil && s.AdditionalProperties.Schema != nil {
		walk(s.AdditionalProperties.Schema, ctx.ChildAdditionalPropertiesContext(s.AdditionalProperties.Schema), path+".*", envSet, total, failed)
	}
	names := make([]string, 0, len(s.Properties))
	for name := range s.Properties {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		p := s.Properties[name]
		walk(&p, ctx.ChildPropertyContext(&p, name), path+"."+name, envSet, total, failed)
	}
	if s.Items != nil && s.Items.Schema != nil {
		walk(s.Items.Schema, ctx.ChildItemsContext(s.Items.Schema), path+"[]", envSet, total, failed)
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}
