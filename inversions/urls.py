from django.urls import path

from inversions import dataset_views, live, my_work, proposals, views

urlpatterns = [
    path("", views.overview, name="overview"),
    path("queue/", views.queue, name="queue"),
    path("programs/", views.program_list, name="program-list"),
    path("programs/pick-next", views.pick_next, name="pick-next"),
    path("programs/export.csv", my_work.program_csv, name="program-csv"),
    path("my/", my_work.my_programs, name="my-programs"),
    path("programs/<str:ipeid>/notes", my_work.add_note, name="program-note"),
    path("programs/<str:ipeid>/", views.program_detail, name="program-detail"),
    path("proposals/", proposals.proposal_list, name="proposal-list"),
    path("proposals/<str:proposal_id>", proposals.proposal_detail, name="proposal-detail"),
    path("datasets/<str:dataset_id>", dataset_views.dataset_detail, name="dataset-detail"),
    path("programs/<str:ipeid>/progress", views.program_progress, name="program-progress"),
    path("programs/<str:ipeid>/state", live.program_state, name="program-state"),
    path("programs/<str:ipeid>/claim", views.claim, name="program-claim"),
    path("programs/<str:ipeid>/release", views.release, name="program-release"),
    path("programs/<str:ipeid>/report", views.report_inverted, name="program-report"),
    path("programs/<str:ipeid>/enqueue", views.enqueue, name="program-enqueue"),
    path("programs/<str:ipeid>/priority", views.set_priority, name="program-priority"),
    path("programs/<str:ipeid>/dequeue", views.dequeue, name="program-dequeue"),
    path("programs/<str:ipeid>/retry", views.retry, name="program-retry"),
    path("programs/<str:ipeid>/requeue", views.requeue, name="program-requeue"),
    path("programs/<str:ipeid>/preprocess", views.preprocess, name="program-preprocess"),
    path("programs/<str:ipeid>/quicklook/<int:order_id>/<str:name>", views.quicklook, name="program-quicklook"),
]
