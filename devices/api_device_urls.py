from django.urls import path

from devices import api_device

urlpatterns = [
    path("register/", api_device.RegisterView.as_view(), name="device-register"),
    path("token/rotate/", api_device.TokenRotateView.as_view(), name="device-token-rotate"),
    path("profile/", api_device.ProfileView.as_view(), name="device-profile"),
    path("password/", api_device.PasswordChangeView.as_view(), name="device-password"),
]
