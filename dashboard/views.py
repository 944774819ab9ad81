from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from checkpoints.models import Source


@login_required
def overview(request):
    ctx = {"sources": Source.objects.all()}
    return render(request, "dashboard/overview.html", ctx)
