from prometheus_client import REGISTRY

from text2image_hub.metrics import Metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_generation_counts_images_latency_and_in_progress_by_source():
    metrics = Metrics()
    metrics.generation_started("task")
    assert sample(metrics, "t2i_generations_in_progress", source="task") == 1
    metrics.generation_finished("task", "local", 3, 1.5)
    metrics.generation_started("api")
    metrics.generation_finished("api", "remote", 1, 0.2)
    assert sample(metrics, "t2i_images_generated_total", backend="local", source="task") == 3
    assert sample(metrics, "t2i_images_generated_total", backend="remote", source="api") == 1
    assert sample(metrics, "t2i_generations_total", backend="local", source="task") == 1
    assert sample(metrics, "t2i_generation_duration_seconds_sum", backend="local", source="task") == 1.5
    assert sample(metrics, "t2i_generation_duration_seconds_bucket", backend="local", source="task", le="2.5") == 1
    assert sample(metrics, "t2i_generation_duration_seconds_bucket", backend="local", source="task", le="1.0") == 0
    assert sample(metrics, "t2i_generations_in_progress", source="task") == 0


def test_failures_by_code_end_the_generation():
    metrics = Metrics()
    metrics.generation_started("task")
    metrics.generation_failed("task", "GPU_OUT_OF_MEMORY")
    assert sample(metrics, "t2i_generation_failures_total", source="task", code="GPU_OUT_OF_MEMORY") == 1
    assert sample(metrics, "t2i_generations_in_progress", source="task") == 0


def test_requests_by_route_method_status():
    metrics = Metrics()
    metrics.request_finished("/v1/models", "GET", 200, 0.003)
    metrics.request_finished("/v1/models", "GET", 200, 0.004)
    metrics.request_finished("/v1/models", "GET", 401, 0.001)
    assert sample(metrics, "t2i_http_requests_total", route="/v1/models", method="GET", status="200") == 2
    assert sample(metrics, "t2i_http_requests_total", route="/v1/models", method="GET", status="401") == 1
    assert sample(metrics, "t2i_http_request_duration_seconds_count", route="/v1/models") == 3


def test_worker_gauges_read_tasks_in_progress_at_scrape_time():
    metrics = Metrics()
    running = [1, 2]
    metrics.track_tasks_in_progress(lambda: len(running))
    assert sample(metrics, "t2i_tasks_in_progress") == 2
    running.pop()
    assert sample(metrics, "t2i_tasks_in_progress") == 1
    metrics.task_recovered("redone")
    assert sample(metrics, "t2i_tasks_recovered_total", outcome="redone") == 1


def test_api_counters():
    metrics = Metrics()
    metrics.cache_lookup(hit=True)
    metrics.cache_lookup(hit=False)
    metrics.cache_lookup(hit=False)
    metrics.rate_limited()
    metrics.set_stored_images(4)
    assert sample(metrics, "t2i_api_cache_lookups_total", result="hit") == 1
    assert sample(metrics, "t2i_api_cache_lookups_total", result="miss") == 2
    assert sample(metrics, "t2i_api_rate_limited_total") == 1
    assert sample(metrics, "t2i_api_stored_images") == 4


def test_each_instance_has_its_own_registry_and_never_the_global_one():
    first, second = Metrics(), Metrics()
    first.rate_limited()
    assert sample(second, "t2i_api_rate_limited_total") == 0
    assert REGISTRY.get_sample_value("t2i_api_rate_limited_total") is None


def test_render_is_prometheus_text_format():
    metrics = Metrics()
    metrics.generation_started("api")
    metrics.generation_finished("api", "local", 2, 0.1)
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=")
    text = body.decode()
    assert "# TYPE t2i_images_generated_total counter" in text
    assert 't2i_images_generated_total{backend="local",source="api"} 2.0' in text
