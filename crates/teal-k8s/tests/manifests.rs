//! What ships in deploy/kubernetes: the CRD is the one the Rust types generate, and
//! every manifest deserializes into the k8s-openapi type it claims to be.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;
use teal_k8s::crd::AnyRollout;

fn deploy_dir() -> String {
    format!("{}/../../deploy/kubernetes", env!("CARGO_MANIFEST_DIR"))
}

fn documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{}/{file}", deploy_dir()))
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_saphyr::from_str_multiple(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn typed<T: serde::de::DeserializeOwned>(document: &Value, file: &str) -> T {
    serde_json::from_value(document.clone()).unwrap_or_else(|e| {
        panic!(
            "{file}: {} {} does not deserialize as {}: {e}",
            document["kind"],
            document["metadata"]["name"],
            std::any::type_name::<T>()
        )
    })
}

#[test]
fn the_checked_in_crd_is_the_one_the_types_generate() {
    let path = format!("{}/crd.yaml", deploy_dir());
    let generated = teal_k8s::crd::crd_yaml();
    if std::env::var_os("TEAL_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap();
    assert!(
        checked_in == generated,
        "deploy/kubernetes/crd.yaml is stale: run `TEAL_BLESS=1 cargo nextest run -p teal-k8s --test manifests` \
         (or `teal controller --print-crd > deploy/kubernetes/crd.yaml`)"
    );
}

#[test]
fn every_manifest_is_the_kubernetes_type_it_claims_to_be() {
    let crds = documents("crd.yaml");
    let names: Vec<String> = crds
        .iter()
        .map(|d| {
            typed::<CustomResourceDefinition>(d, "crd.yaml")
                .metadata
                .name
                .unwrap()
        })
        .collect();
    assert_eq!(names, ["rollouts.teal.dev", "analysistemplates.teal.dev"]);
    let crd: CustomResourceDefinition = typed(&crds[0], "crd.yaml");
    assert_eq!(crd.spec.group, "teal.dev");
    let version = &crd.spec.versions[0];
    assert!(version.served && version.storage);
    assert!(
        version
            .subresources
            .as_ref()
            .is_some_and(|s| s.status.is_some() && s.scale.is_some()),
        "status and scale subresources"
    );
    let _: Namespace = typed(&documents("namespace.yaml")[0], "namespace.yaml");

    let mut service_accounts = Vec::new();
    let mut kinds = Vec::new();
    for document in documents("rbac.yaml") {
        let kind = document["kind"].as_str().unwrap().to_owned();
        match kind.as_str() {
            "ServiceAccount" => {
                let sa: ServiceAccount = typed(&document, "rbac.yaml");
                service_accounts.push(sa.metadata.name.unwrap());
            }
            "ClusterRole" => {
                let role: ClusterRole = typed(&document, "rbac.yaml");
                for rule in role.rules.unwrap() {
                    assert!(
                        !rule.verbs.contains(&"*".to_owned())
                            && !rule.resources.unwrap_or_default().contains(&"*".to_owned()),
                        "least privilege: no wildcards"
                    );
                }
            }
            "ClusterRoleBinding" => {
                let _: ClusterRoleBinding = typed(&document, "rbac.yaml");
            }
            "Role" => {
                let _: Role = typed(&document, "rbac.yaml");
            }
            "RoleBinding" => {
                let _: RoleBinding = typed(&document, "rbac.yaml");
            }
            other => panic!("rbac.yaml: unexpected {other}"),
        }
        kinds.push(kind);
    }
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding"
        ]
    );

    let deployment: Deployment = typed(&documents("deployment.yaml")[0], "deployment.yaml");
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    assert!(service_accounts.contains(pod.service_account_name.as_ref().unwrap()));
    assert_eq!(pod.containers[0].args.as_ref().unwrap(), &["controller"]);

    let kustomization = &documents("kustomization.yaml")[0];
    for resource in kustomization["resources"].as_array().unwrap() {
        let file = resource.as_str().unwrap();
        assert!(
            std::path::Path::new(&format!("{}/{file}", deploy_dir())).exists(),
            "kustomization.yaml names {file}, which is missing"
        );
    }
}

#[test]
fn argo_rollouts_documentation_manifests_parse_into_the_shared_spec() {
    for file in ["argo-bluegreen.yaml", "istio.yaml", "gateway-api.yaml"] {
        let text = std::fs::read_to_string(format!(
            "{}/tests/manifests/{file}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let documents: Vec<Value> = serde_saphyr::from_str_multiple(&text).unwrap();
        let rollout: AnyRollout = typed(
            documents.iter().find(|d| d["kind"] == "Rollout").unwrap(),
            file,
        );
        teal_k8s::spec_check::validate(&rollout.spec).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}
